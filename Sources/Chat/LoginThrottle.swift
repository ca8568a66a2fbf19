import SwitchyardCore

/// Counts failed logins per user name; past `maxFailures` within `window` the name is locked for `window`.
/// Unknown names are counted like known ones, so the throttle reveals nothing either.
///
/// A value type with no clock and no lock: every call takes `now` (monotonic nanoseconds). `ChatCore` owns one.
public struct LoginThrottle: Sendable {
    private struct Entry {
        var failures: Int
        var windowStart: UInt64
        var lockedUntil: UInt64
    }

    /// Entries kept before those whose window and lock are over are dropped.
    static let pruneThreshold = 10_000

    private let maxFailures: Int
    private let windowNs: UInt64
    private var table: [String: Entry] = [:]

    /// - Parameters:
    ///   - maxFailures: Failures within `window` that lock the name (at least 1).
    ///   - window: The counting window, and how long a locked name stays locked.
    public init(maxFailures: Int, window: Duration) {
        self.maxFailures = max(1, maxFailures)
        windowNs = window.nanosecondsSaturated
    }

    /// True when `name` may try a login at `now`.
    public mutating func allows(_ name: String, now: UInt64) -> Bool {
        guard let e = table[name] else { return true }
        if e.lockedUntil > now { return false }
        if now &- e.windowStart > windowNs { table[name] = nil }
        return true
    }

    /// Records a failed login at `now`. True when this failure locked the name.
    @discardableResult
    public mutating func recordFailure(_ name: String, now: UInt64) -> Bool {
        var e = table[name] ?? Entry(failures: 0, windowStart: now, lockedUntil: 0)
        if now &- e.windowStart > windowNs { e = Entry(failures: 0, windowStart: now, lockedUntil: 0) }
        e.failures += 1
        let locks = e.failures == maxFailures
        if e.failures >= maxFailures { e.lockedUntil = now &+ windowNs }
        table[name] = e
        // Keep the table bounded: drop entries whose window and lock are over.
        if table.count > Self.pruneThreshold {
            let windowNs = self.windowNs
            table = table.filter { now &- $0.value.windowStart <= windowNs || $0.value.lockedUntil > now }
        }
        return locks
    }

    /// Forgets the failures of `name` (after a successful login).
    public mutating func reset(_ name: String) {
        table[name] = nil
    }
}
