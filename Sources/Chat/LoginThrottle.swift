import SwitchyardCore

/// Counts login attempts per (user name, source address): an attempt counts from the moment it is let through, before
/// its password is hashed, so attempts in flight count against the limit. Once `maxFailures` attempts fail within
/// `window`, that name is locked for that source only, for `window` the first time and twice as long each time
/// after (at most `maxLockout`); the owner logging in from elsewhere is not affected. Unknown names are counted like
/// known ones, so the throttle reveals nothing either.
///
///     begin(name, source) --allowed--> [password hashed] --> end(.succeeded | .failed | .aborted)
///                         --refused--> (locked, or failures + attempts in flight reached maxFailures)
///
/// A value type with no clock and no lock: every call takes `now` (monotonic nanoseconds). `ChatCore` owns one.
public struct LoginThrottle: Sendable {
    /// One (name, source) pair.
    public struct Key: Sendable, Hashable {
        public var name: String
        public var source: UInt32

        public init(name: String, source: UInt32) {
            self.name = name
            self.source = source
        }
    }

    /// How an attempt begun with ``begin(_:now:)`` ended.
    public enum Outcome: Sendable, Hashable {
        /// The password matched: the pair's failures and backoff are forgotten.
        case succeeded
        /// A wrong name or password: counted as a failure.
        case failed
        /// Not decided (a storage error): the attempt no longer counts.
        case aborted
    }

    private struct Entry {
        var failures = 0
        var inFlight = 0
        var windowStart: UInt64
        var lockedUntil: UInt64 = 0
        /// Locks so far: the next one lasts `window << locks` (capped).
        var locks = 0
        var lastActivity: UInt64
    }

    /// Entries kept before those idle for longer than the longest lockout are dropped.
    static let pruneThreshold = 10_000

    private let maxFailures: Int
    private let windowNs: UInt64
    private let maxLockoutNs: UInt64
    private var table: [Key: Entry] = [:]

    /// - Parameters:
    ///   - maxFailures: Failed (or in-flight) attempts within `window` that lock the pair (at least 1).
    ///   - window: The counting window, and how long the first lock lasts.
    ///   - maxLockout: The longest lock (backoff doubles up to it); at least `window`.
    public init(maxFailures: Int, window: Duration, maxLockout: Duration = .seconds(3600)) {
        self.maxFailures = max(1, maxFailures)
        windowNs = window.nanosecondsSaturated
        maxLockoutNs = max(windowNs, maxLockout.nanosecondsSaturated)
    }

    /// Pairs tracked.
    public var trackedPairs: Int { table.count }

    /// Begins an attempt of `key` at `now`: true, and counted until ``end(_:_:now:)``, when the pair is not locked and
    /// its failures plus its attempts in flight are below the limit.
    public mutating func begin(_ key: Key, now: UInt64) -> Bool {
        var e = table[key] ?? Entry(windowStart: now, lastActivity: now)
        if e.lockedUntil > now { return false }
        if e.lockedUntil != 0 || now &- e.windowStart > windowNs {
            // The lock or the window is over: a new window (the backoff level stays).
            e.failures = 0
            e.lockedUntil = 0
            e.windowStart = now
        }
        guard e.failures + e.inFlight < maxFailures else { return false }
        e.inFlight += 1
        e.lastActivity = now
        table[key] = e
        if table.count > Self.pruneThreshold { prune(now: now) }
        return true
    }

    /// Ends an attempt begun at ``begin(_:now:)``. True when this failure locked the pair.
    @discardableResult
    public mutating func end(_ key: Key, _ outcome: Outcome, now: UInt64) -> Bool {
        guard var e = table[key] else { return false }
        e.inFlight = max(0, e.inFlight - 1)
        e.lastActivity = now
        switch outcome {
        case .succeeded:
            table[key] = nil
            return false
        case .aborted:
            table[key] = e
            return false
        case .failed:
            e.failures += 1
            var locked = false
            if e.failures >= maxFailures && e.lockedUntil <= now {
                let shift = min(e.locks, 32)
                let length = windowNs > maxLockoutNs >> UInt64(shift) ? maxLockoutNs : windowNs << UInt64(shift)
                e.lockedUntil = now &+ length
                e.locks += 1
                locked = true
            }
            table[key] = e
            return locked
        }
    }

    /// Drops the pairs with nothing in flight, no lock, and no activity for the longest lockout (their backoff is
    /// forgotten).
    private mutating func prune(now: UInt64) {
        let idle = maxLockoutNs
        table = table.filter { _, e in e.inFlight > 0 || e.lockedUntil > now || now &- e.lastActivity <= idle }
    }
}
