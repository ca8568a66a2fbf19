import Dispatch
import Synchronization

/// The one timer of the Storage library for statement timeouts: a single dispatch timer source on a serial queue
/// for every connection of the process (no thread per statement). Entries are kept in a dictionary; at each
/// expiry the timer runs the due ones and rearms for the earliest left (connections in flight are few, so a scan
/// is cheap). Actions run on a global queue: a cancel may block (PQcancel, a MySQL `KILL QUERY` connection).
///
/// Safe to call from any thread.
final class StatementTimer: Sendable {
    /// The process's timer.
    static let shared = StatementTimer()

    private struct Entry {
        var deadline: DispatchTime
        var action: @Sendable () -> Void
    }

    private struct State {
        var entries: [UInt64: Entry] = [:]
        var nextID: UInt64 = 1
        /// The deadline the source is armed for (`nil`: disarmed).
        var armedFor: DispatchTime?
    }

    private let state = Mutex(State())
    private let queue = DispatchQueue(label: "switchyard.storage.statement-timer")
    private let actions = DispatchQueue(label: "switchyard.storage.statement-cancel", attributes: .concurrent)
    /// `nonisolated(unsafe)`: a dispatch source is thread-safe (schedule may be called from any thread); the
    /// reference is set once in `init`.
    private nonisolated(unsafe) let source: any DispatchSourceTimer

    private init() {
        source = DispatchSource.makeTimerSource(queue: queue)
        source.setEventHandler { [weak self] in self?.fire() }
        source.schedule(deadline: .distantFuture)
        source.activate()
    }

    /// Runs `action` after `delay` unless ``cancel(_:)`` comes first; returns the entry's id.
    func schedule(after delay: Duration, _ action: @escaping @Sendable () -> Void) -> UInt64 {
        // Clamped to about 136 years, so that no duration overflows (a zero or negative one runs at once).
        let seconds = min(max(0, delay.components.seconds), Int64(UInt32.max))
        let nanoseconds = seconds * 1_000_000_000 + max(0, delay.components.attoseconds / 1_000_000_000)
        let deadline = DispatchTime.now() + .nanoseconds(Int(clamping: nanoseconds))
        return state.withLock { s -> UInt64 in
            let id = s.nextID
            s.nextID += 1
            s.entries[id] = Entry(deadline: deadline, action: action)
            if s.armedFor.map({ deadline < $0 }) ?? true {
                s.armedFor = deadline
                source.schedule(deadline: deadline, leeway: .milliseconds(1))
            }
            return id
        }
    }

    /// Forgets an entry (it will not run). A no-op for one that ran or was cancelled.
    func cancel(_ id: UInt64) {
        state.withLock { s in _ = s.entries.removeValue(forKey: id) }
    }

    /// Entries waiting (for tests and statistics).
    var pending: Int { state.withLock { $0.entries.count } }

    /// Timer queue: runs the due entries and rearms for the next.
    private func fire() {
        let now = DispatchTime.now()
        let due = state.withLock { s -> [@Sendable () -> Void] in
            var due: [@Sendable () -> Void] = []
            var earliest: DispatchTime?
            for (id, entry) in s.entries {
                if entry.deadline <= now {
                    due.append(entry.action)
                    s.entries.removeValue(forKey: id)
                } else if earliest.map({ entry.deadline < $0 }) ?? true {
                    earliest = entry.deadline
                }
            }
            s.armedFor = earliest
            source.schedule(deadline: earliest ?? .distantFuture, leeway: .milliseconds(1))
            return due
        }
        for action in due { actions.async(execute: action) }
    }
}
