/// How a group chooses the I/O loop of a server's new connection.
///
/// `.roundRobin` is muduo's rule: every loop in turn. `.adaptive` (the default) gives new connections only to as
/// many loops as the machine has cores free for this process, the least loaded of them first. A loop costs a
/// thread wake-up per burst of events; when the other processes of the machine (the clients on the same box, the
/// applications next to a per-machine agent) already take the cores, loops beyond the free cores only queue for
/// a core and switch in and out. Measured on 2 cores with a client taking one: 10 connections over two loops cost
/// 0.33-0.40 context switches per message, on one loop 0.01-0.03. On a machine with idle cores every loop is used.
///
/// A connection stays on the loop it was given: placement decides for new connections only. Until the first
/// measurement (the first connection after `interval`) every loop takes connections; clients that pick a loop
/// with `EventLoopGroup.next()` are not counted.
public struct LoopPlacement: Sendable {
    enum Kind: Sendable { case roundRobin, adaptive }

    let kind: Kind
    /// Cores free for this process since the previous call (nil: unknown, keep the last decision). Called on the
    /// accepting loop when a connection is placed, at most once per `interval`: it must be cheap and not block.
    let freeCores: @Sendable () -> Double?
    /// The shortest time between two measurements of the free cores.
    public var interval: Duration

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
    /// on the accepting loop at most once per `interval`; it must be cheap and must not block.
    public static func adaptive(
        interval: Duration = .milliseconds(500), freeCores: @escaping @Sendable () -> Double?
    ) -> LoopPlacement {
        LoopPlacement(kind: .adaptive, freeCores: freeCores, interval: interval)
    }

    /// How many of `loopCount` loops take new connections when `freeCores` cores are free: a loop for each core
    /// of which at least 0.7 is free, at least one.
    public static func activeLoops(freeCores: Double, loopCount: Int) -> Int {
        let loops = max(1, loopCount)
        if freeCores.isNaN || freeCores == .infinity { return loops }  // no usable measure: every loop
        let n = (freeCores + 0.3).rounded(.down)
        if n < 1 { return 1 }
        return Int(min(n, Double(loops)))
    }
}
