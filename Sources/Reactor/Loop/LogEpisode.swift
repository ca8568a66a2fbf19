import SwitchyardCore

/// Turns a stream of like events (refused connections, closed idle peers) into episodes, so a server logs one line
/// when an episode starts and one, with the count, when it ends, instead of one per event. A plain value: its owner
/// keeps it on one thread (or under its lock) and passes the time in.
///
/// An episode ends when the owner says the condition is over (`end()`: accepting succeeded again), or by itself
/// after `quietInterval` without an event (the next event then reports the old episode's count and starts anew).
public struct LogEpisode: Sendable {
    /// An event after this long without one starts a new episode (nanoseconds).
    public let quietIntervalNanoseconds: UInt64
    /// Events in the current episode (0: no episode running).
    public private(set) var count = 0
    /// When the current episode started (monotonic ns).
    public private(set) var startTime: UInt64 = 0
    private var lastEvent: UInt64 = 0

    /// What one recorded event means for the log.
    public enum Step: Sendable, Equatable {
        /// The first event of a new episode: log it. `endedCount` is the count of the episode the quiet interval
        /// ended before it (0 if none was running), to be logged as that episode's end.
        case started(endedCount: Int)
        /// One more event of the running episode: log nothing.
        case counted
    }

    public init(quietInterval: Duration = .seconds(10)) {
        quietIntervalNanoseconds = quietInterval.nanosecondsSaturated
    }

    /// Records one event at `now` (monotonic ns).
    public mutating func record(now: UInt64) -> Step {
        defer { lastEvent = now }
        if count > 0 && now &- lastEvent < quietIntervalNanoseconds {
            count += 1
            return .counted
        }
        let ended = count
        count = 1
        startTime = now
        return .started(endedCount: ended)
    }

    /// Ends the running episode (the condition is over); its count, or nil when none was running.
    public mutating func end() -> Int? {
        guard count > 0 else { return nil }
        defer { count = 0 }
        return count
    }

    /// Ends the running episode if its quiet interval has passed at `now`; its count, or nil.
    public mutating func endIfQuiet(now: UInt64) -> Int? {
        guard count > 0, now &- lastEvent >= quietIntervalNanoseconds else { return nil }
        return end()
    }
}
