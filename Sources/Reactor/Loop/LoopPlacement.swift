/// How a group chooses the I/O loop of a server's new connection.
///
/// `.roundRobin` is muduo's rule: every loop in turn. `.adaptive` (the default) gives new connections only to as
/// many loops as the machine has cores free for this process, the least loaded of them first. A loop costs a
/// thread wake-up per burst of events; when the other processes of the machine (the clients on the same box, the
/// applications next to a per-machine agent) already take the cores, loops beyond the free cores only queue for
/// a core and switch in and out. Measured on 2 cores with a client taking one: 10 connections over two loops cost
/// 0.33-0.40 context switches per message, on one loop 0.01-0.03. On a machine with idle cores every loop is used.
///
/// The acceptor loop measures every `interval` (a read of /proc/stat twice a second by default), so a decision
/// reflects the last moments, not an average over an idle spell. A connection stays on the loop it was given:
/// placement decides for new connections only. Until the first measurement every loop takes connections; clients
/// that pick a loop with `EventLoopGroup.next()` are not counted.
public struct LoopPlacement: Sendable {
    enum Kind: Sendable { case roundRobin, adaptive }

    let kind: Kind
    /// Cores free for this process since the previous call (nil: unknown, keep the last decision). Called on the
    /// acceptor loop every `interval`: it must be cheap and must not block.
    let freeCores: @Sendable () -> Double?
    /// How often the free cores are measured (at least a millisecond).
    public let interval: Duration

    /// Every loop in turn.
    public static var roundRobin: LoopPlacement {
        LoopPlacement(kind: .roundRobin, freeCores: { nil }, interval: .milliseconds(500))
    }

    /// New connections go to the first N loops, N the cores the machine has free for this process (from
    /// /proc/stat and the process's CPU time; see `FreeCoreMeter`), at least one; among them the loop with the
    /// fewest connections.
    public static var adaptive: LoopPlacement {
        let meter = FreeCoreMeter()
        return LoopPlacement(kind: .adaptive, freeCores: { meter.sample() }, interval: .milliseconds(500))
    }

    /// `.adaptive` with your own measure of the free cores (a container's CPU quota, or a test). `freeCores` runs
    /// on the acceptor loop every `interval`; it must be cheap and must not block.
    public static func adaptive(
        interval: Duration = .milliseconds(500), freeCores: @escaping @Sendable () -> Double?
    ) -> LoopPlacement {
        LoopPlacement(kind: .adaptive, freeCores: freeCores, interval: max(interval, .milliseconds(1)))
    }

    /// How many of `loopCount` loops take new connections when `freeCores` cores are free: a loop for each core
    /// of which at least 0.7 is free, at least one. With `current` (the count in force) the answer moves only on a
    /// clear change: up when 0.8 of the next core is free, down when less than 0.6 of the last one is.
    public static func activeLoops(freeCores: Double, loopCount: Int, current: Int? = nil) -> Int {
        let loops = max(1, loopCount)
        if freeCores.isNaN || freeCores == .infinity { return loops }  // no usable measure: every loop
        guard let current, (1...loops).contains(current) else {
            let n = (freeCores + 0.3).rounded(.down)
            if n < 1 { return 1 }
            return Int(min(n, Double(loops)))
        }
        var n = current
        while n < loops && freeCores >= Double(n) + 0.8 { n += 1 }
        while n > 1 && freeCores < Double(n) - 0.4 { n -= 1 }
        return n
    }
}
