#if canImport(Glibc)
import Glibc
#endif
import Synchronization

/// Measures the cores free for this process between two calls: the CPUs it may run on (its affinity mask) minus
/// the time the rest of the machine kept them busy. Busy is user, nice, system and steal time of those CPUs from
/// /proc/stat; this process's own CPU time is subtracted. Interrupt and softirq time are left out: the kernel does
/// not charge this process for the network work done on its behalf, so counting it would make a server's own
/// traffic look like someone else's load.
///
/// The answer falls at once when the others get busier and rises back over `riseSeconds`: connections arrive in
/// bursts while the machine is quiet (the clients are connecting, not yet sending), and a loop chosen then keeps
/// its connections.
public final class FreeCoreMeter: Sendable {
    /// One reading of the machine's and this process's CPU time.
    public struct Sample: Sendable {
        /// Busy time of the CPUs this process may use, in clock ticks.
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

    private let cpus: Set<Int>?
    private let cores: Int
    private let state = Mutex<(last: Sample?, free: Double?)>((nil, nil))
    private let ticksPerSecond = Double(max(1, sysconf(Int32(_SC_CLK_TCK))))

    /// A meter for the CPUs this process may run on now (all online CPUs when the mask cannot be read).
    public init() {
        let allowed = SystemInfo.allowedCPUs()
        cpus = allowed.map(Set.init)
        cores = allowed?.count ?? SystemInfo.coreCount
    }

    /// Free cores since the previous call, smoothed (nil on the first call or when /proc/stat cannot be read).
    public func sample() -> Double? {
        guard let now = readNow() else { return nil }
        return state.withLock { state -> Double? in
            defer { state.last = now }
            guard let previous = state.last,
                  let measured = Self.freeCores(from: previous, to: now, cores: cores, ticksPerSecond: ticksPerSecond)
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

    /// Free cores between two samples: `cores` minus the others' use (the machine's busy time less this process's),
    /// within 0...cores. Nil when no time passed or a counter went backwards.
    public static func freeCores(from a: Sample, to b: Sample, cores: Int, ticksPerSecond: Double) -> Double? {
        guard b.wallNanoseconds > a.wallNanoseconds, b.machineTicks >= a.machineTicks,
              b.processNanoseconds >= a.processNanoseconds
        else { return nil }
        let wall = Double(b.wallNanoseconds - a.wallNanoseconds) / 1e9
        let machine = Double(b.machineTicks - a.machineTicks) / ticksPerSecond / wall
        let own = Double(b.processNanoseconds - a.processNanoseconds) / 1e9 / wall
        let others = max(0, machine - own)
        return max(0, Double(cores) - others)
    }

    private func readNow() -> Sample? {
        guard let text = Posix.readFile("/proc/stat", until: "intr", limit: 1 << 20),  // the cpu lines come first
              let ticks = Self.parseBusyTicks(text[...], cpus: cpus)
        else { return nil }
        return Sample(machineTicks: ticks, processNanoseconds: SystemInfo.processCPUNanoseconds(),
                      wallNanoseconds: SystemInfo.monotonicNanoseconds())
    }

    /// Busy ticks (user + nice + system + steal) in /proc/stat's text: of the "cpuN" lines for N in `cpus`, or of
    /// the all-CPU "cpu" line when `cpus` is nil. Nil unless every line it needs is well formed and present.
    public static func parseBusyTicks(_ text: ArraySlice<UInt8>, cpus: Set<Int>?) -> UInt64? {
        var total: UInt64 = 0
        var found = 0
        for line in text.split(separator: UInt8(ascii: "\n")) {
            let fields = line.split(separator: UInt8(ascii: " "))
            guard let name = fields.first, name.starts(with: "cpu".utf8) else {
                if found > 0 { break }  // the cpu lines come first and together
                continue
            }
            let suffix = name.dropFirst(3)
            if let cpus {
                guard !suffix.isEmpty else { continue }
                guard let index = parseDecimal(suffix).flatMap({ Int(exactly: $0) }) else { return nil }
                guard cpus.contains(index) else { continue }
            } else if !suffix.isEmpty {
                continue
            }
            // user nice system idle iowait irq softirq steal
            guard fields.count >= 9 else { return nil }
            for column in [1, 2, 3, 8] {
                guard let v = parseDecimal(fields[column]) else { return nil }
                let (sum, overflow) = total.addingReportingOverflow(v)
                if overflow { return nil }
                total = sum
            }
            found += 1
            if cpus == nil { break }
        }
        if let cpus { return found == cpus.count ? total : nil }
        return found == 1 ? total : nil
    }

    private static func parseDecimal(_ digits: ArraySlice<UInt8>) -> UInt64? {
        guard !digits.isEmpty, digits.count <= 20 else { return nil }
        var value: UInt64 = 0
        for d in digits {
            guard d >= UInt8(ascii: "0"), d <= UInt8(ascii: "9") else { return nil }
            let (times, o1) = value.multipliedReportingOverflow(by: 10)
            let (plus, o2) = times.addingReportingOverflow(UInt64(d - UInt8(ascii: "0")))
            if o1 || o2 { return nil }
            value = plus
        }
        return value
    }
}
