import Reactor
import SwitchyardCore
import Synchronization

/// Counts failed logins per user name; past `maxFailures` within `window` the name is locked for `window`.
/// Unknown names are counted like known ones, so the throttle reveals nothing either. Safe to call from any
/// thread (a Mutex guards the table). The clock is injected for tests (monotonic nanoseconds).
public final class LoginThrottle: Sendable {
    private struct Entry {
        var failures: Int
        var windowStart: UInt64
        var lockedUntil: UInt64
    }

    private let maxFailures: Int
    private let windowNs: UInt64
    private let now: @Sendable () -> UInt64
    private let table = Mutex<[String: Entry]>([:])

    public init(maxFailures: Int, window: Duration,
                now: @escaping @Sendable () -> UInt64 = { SystemInfo.monotonicNanoseconds() }) {
        self.maxFailures = max(1, maxFailures)
        windowNs = window.nanosecondsSaturated
        self.now = now
    }

    /// True when `name` may try a login now.
    public func allows(_ name: String) -> Bool {
        let t = now()
        return table.withLock { table in
            guard let e = table[name] else { return true }
            if e.lockedUntil > t { return false }
            if t &- e.windowStart > windowNs { table[name] = nil }
            return true
        }
    }

    /// Records a failed login.
    public func recordFailure(_ name: String) {
        let t = now()
        table.withLock { table in
            var e = table[name] ?? Entry(failures: 0, windowStart: t, lockedUntil: 0)
            if t &- e.windowStart > windowNs { e = Entry(failures: 0, windowStart: t, lockedUntil: 0) }
            e.failures += 1
            if e.failures >= maxFailures { e.lockedUntil = t &+ windowNs }
            table[name] = e
            // Keep the table bounded: drop entries whose window and lock are over.
            if table.count > 10_000 {
                table = table.filter { t &- $0.value.windowStart <= windowNs || $0.value.lockedUntil > t }
            }
        }
    }

    /// Forgets the failures of `name` (after a successful login).
    public func reset(_ name: String) {
        _ = table.withLock { $0.removeValue(forKey: name) }
    }
}
