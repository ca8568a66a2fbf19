#if canImport(Glibc)
import Glibc
#endif
import Synchronization

/// How a group chooses the I/O loop of a server's new connection.
///
/// `.roundRobin` is muduo's rule: every loop in turn. `.adaptive` (the default) gives new connections only to as
/// many loops as the machine has cores free for this process, the least loaded of them first. A loop costs a
/// thread wake-up per burst of events; when the other processes of the machine (the clients on the same box, the
/// applications next to a per-machine agent) already take the cores, loops beyond the free cores only queue for
/// a core and switch in and out. Measured on 2 cores with a client taking one: 10 connections over two loops cost
/// 0.33-0.40 context switches per message, on one loop 0.01-0.03. On a machine with idle cores every loop is used.
public struct LoopPlacement: Sendable {
    enum Kind: Sendable { case roundRobin, adaptive }

    let kind: Kind
    /// Cores free for this process since the previous call: online cores minus what the rest of the machine used
    /// (nil: unknown, keep the last decision). Called when a connection is placed, at most once per `interval`.
    let freeCores: @Sendable () -> Double?
    /// The shortest time between two measurements of the free cores.
    public var interval: Duration

    /// Every loop in turn.
    public static var roundRobin: LoopPlacement {
        LoopPlacement(kind: .roundRobin, freeCores: { nil }, interval: .milliseconds(100))
    }

    /// New connections go to the first N loops, N the cores the machine has free for this process (from
    /// /proc/stat and the process's CPU time; see `FreeCoreMeter`), at least one; among them the loop with the
    /// fewest connections.
    public static var adaptive: LoopPlacement {
        let meter = FreeCoreMeter()
        return LoopPlacement(kind: .adaptive, freeCores: { meter.sample() }, interval: .milliseconds(100))
    }

    /// `.adaptive` with your own measure of the free cores (a container's CPU quota, or a test).
    public static func adaptive(
        interval: Duration = .milliseconds(100), freeCores: @escaping @Sendable () -> Double?
    ) -> LoopPlacement {
        LoopPlacement(kind: .adaptive, freeCores: freeCores, interval: interval)
    }

    /// How many of `loopCount` loops take new connections when `freeCores` cores are free: a loop for each core
    /// of which at least 0.7 is free, at least one.
    public static func activeLoops(freeCores: Double, loopCount: Int) -> Int {
        guard freeCores.isFinite else { return loopCount }
        let n = (freeCores + 0.3).rounded(.down)
        if n < 1 { return min(1, loopCount) }
        return Int(min(n, Double(loopCount)))
    }
}

/// Measures the cores free for this process between two calls: online cores minus the CPU time the rest of the
/// machine used (all CPUs' busy time from /proc/stat, steal included, minus this process's CPU time).
///
/// The answer falls at once when the others get busier and rises back over about `riseSeconds`: connections arrive
/// in bursts while the machine is quiet (the clients are connecting, not yet sending), and a loop chosen then
/// keeps its connections.
public final class FreeCoreMeter: Sendable {
    /// One reading of the machine's and this process's CPU time.
    public struct Sample: Sendable {
        /// Busy time of all CPUs, in clock ticks.
        public var machineTicks: UInt64
        /// This process's CPU time, ns.
        public var processNanoseconds: UInt64
        /// Monotonic time, ns.
        public var wallNanoseconds: UInt64

        public init(machineTicks: UInt64, processNanoseconds: UInt64, wallNanoseconds: UInt64) {
            self.machineTicks = machineTicks
            self.processNanoseconds = processNanoseconds
            self.wallNanoseconds = wallNanoseconds
        }
    }

    /// How long free cores take to count fully again after the others' use dropped.
    public static let riseSeconds = 2.0

    private let state = Mutex<(last: Sample?, free: Double?)>((nil, nil))
    private let ticksPerSecond = Double(max(1, sysconf(Int32(_SC_CLK_TCK))))

    public init() {}

    /// Free cores since the previous call, smoothed (nil on the first call or when /proc/stat cannot be read).
    public func sample() -> Double? {
        guard let now = Self.readNow() else { return nil }
        return state.withLock { state -> Double? in
            defer { state.last = now }
            guard let previous = state.last,
                  let measured = Self.freeCores(from: previous, to: now, cores: SystemInfo.coreCount,
                                                ticksPerSecond: ticksPerSecond)
            else { return state.free }
            let elapsed = Double(now.wallNanoseconds &- previous.wallNanoseconds) / 1e9
            let free = Self.smoothed(previous: state.free, measured: measured, elapsedSeconds: elapsed)
            state.free = free
            return free
        }
    }

    /// Falls to `measured` at once; rises toward it in proportion to the time passed (all the way after
    /// `riseSeconds`).
    public static func smoothed(previous: Double?, measured: Double, elapsedSeconds: Double) -> Double {
        guard let previous, measured > previous else { return measured }
        let share = min(1, max(0, elapsedSeconds) / riseSeconds)
        return previous + (measured - previous) * share
    }

    /// The arithmetic of `sample()`, separate so it can be tested without a machine.
    public static func freeCores(from a: Sample, to b: Sample, cores: Int, ticksPerSecond: Double) -> Double? {
        guard b.wallNanoseconds > a.wallNanoseconds, b.machineTicks >= a.machineTicks else { return nil }
        let wall = Double(b.wallNanoseconds - a.wallNanoseconds) / 1e9
        let machine = Double(b.machineTicks - a.machineTicks) / ticksPerSecond / wall
        let own = Double(b.processNanoseconds &- a.processNanoseconds) / 1e9 / wall
        let others = max(0, machine - own)
        return max(0, Double(cores) - others)
    }

    /// Reads /proc/stat, the process's CPU clock and the monotonic clock (nil if /proc/stat is unreadable).
    public static func readNow() -> Sample? {
        guard let ticks = machineBusyTicks() else { return nil }
        var ts = timespec()
        clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts)
        return Sample(machineTicks: ticks, processNanoseconds: UInt64(ts.tv_sec) * 1_000_000_000 + UInt64(ts.tv_nsec),
                      wallNanoseconds: SystemInfo.monotonicNanoseconds())
    }

    /// Sum of the busy columns of /proc/stat's "cpu" line: user, nice, system, irq, softirq, steal (idle and
    /// iowait are free time; guest time is already inside user).
    static func machineBusyTicks() -> UInt64? {
        let fd = open("/proc/stat", O_RDONLY | O_CLOEXEC)
        if fd < 0 { return nil }
        defer { Posix.close(fd) }
        var buffer = [UInt8](repeating: 0, count: 512)
        let n = buffer.withUnsafeMutableBytes { Glibc.read(fd, $0.baseAddress, $0.count) }
        guard n > 0 else { return nil }
        return parseBusyTicks(buffer[0..<n])
    }

    /// The busy ticks of the first line of /proc/stat's text (nil unless it is a well-formed "cpu" line).
    public static func parseBusyTicks(_ text: ArraySlice<UInt8>) -> UInt64? {
        guard let end = text.firstIndex(of: UInt8(ascii: "\n")) else { return nil }
        let fields = text[text.startIndex..<end].split(separator: UInt8(ascii: " "))
        guard fields.count >= 9, fields[0].elementsEqual("cpu".utf8) else { return nil }
        var values: [UInt64] = []
        for field in fields.dropFirst().prefix(8) {
            guard let v = UInt64(String(decoding: field, as: UTF8.self)) else { return nil }
            values.append(v)
        }
        // user nice system idle iowait irq softirq steal
        var busy: UInt64 = 0
        for i in [0, 1, 2, 5, 6, 7] {
            let (sum, overflow) = busy.addingReportingOverflow(values[i])
            if overflow { return nil }
            busy = sum
        }
        return busy
    }
}
