import DequeModule

/// Which RouteChange rows may be deleted: those at or below the newest version this name service saw at least
/// `retention` ago. RouteChange has no time column (Lars's table), so the versions are timed here, as the polls see
/// them. Another name service on the same database that polls more often than `retention` has read every row it
/// deletes; one that was away longer reloads everything (a restart) or pushes the routes whose hosts differ (an
/// outage), so only a change undone within the outage goes unpushed. Lars deletes the rows once it published them,
/// which would take them from a second name service before it read them.
///
/// A pure value driven by the caller's clock: `observe` on every successful poll, `prunableVersion` when it is time
/// to prune.
public struct RouteChangeRetention<Instant: InstantProtocol>: Sendable where Instant.Duration == Duration {
    public let retention: Duration
    /// (when a version was first seen, the version), oldest first; one entry per version change.
    private var seen: Deque<(at: Instant, version: Int64)> = []
    /// The highest version whose rows may be deleted (seen at least `retention` ago).
    private var due: Int64?
    /// The version the rows were deleted up to (nil: nothing yet).
    public private(set) var prunedThrough: Int64?

    public init(retention: Duration) {
        self.retention = retention
    }

    /// Records the version a poll read at `now`.
    public mutating func observe(version: Int64, at now: Instant) {
        if seen.last?.version != version { seen.append((now, version)) }
    }

    /// The version whose RouteChange rows (and all below it) may be deleted at `now`, nil when nothing more may be
    /// than what ``pruned(through:)`` confirmed. Entries it passes are dropped, so the history stays small.
    public mutating func prunableVersion(now: Instant) -> Int64? {
        while let first = seen.first, first.at.duration(to: now) >= retention {
            due = max(due ?? first.version, first.version)
            seen.removeFirst()
        }
        guard let due, due > (prunedThrough ?? Int64.min) else { return nil }
        return due
    }

    /// Confirms that the rows up to `version` were deleted (a failed delete is not confirmed, and is tried again).
    public mutating func pruned(through version: Int64) {
        prunedThrough = max(prunedThrough ?? version, version)
    }
}
