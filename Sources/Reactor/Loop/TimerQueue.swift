import HeapModule

/// Identifies a scheduled timer; pass it to `EventLoop.cancel(_:)` (or call `cancel()`) to stop it. It holds its
/// loop, so a handle kept after the loop's group is gone can still be cancelled (the loop has stopped: nothing
/// happens).
public struct TimerHandle: Sendable, Hashable {
    let id: UInt64
    let loop: EventLoop

    public static func == (a: TimerHandle, b: TimerHandle) -> Bool { a.id == b.id && a.loop === b.loop }
    public func hash(into h: inout Hasher) { h.combine(id) }

    /// Cancels the timer. Safe to call from any thread; from the loop's thread a cancelled timer never fires
    /// afterwards. Cancelling a timer that already fired (or was cancelled) does nothing.
    public func cancel() { loop.cancel(self) }
}

/// The loop's timers: a min-heap of deadlines plus the callbacks by id (a cancelled id is simply
/// removed from the table and skipped when its heap entry surfaces). Loop thread only.
struct TimerQueue {
    struct Entry: Comparable {
        var deadline: UInt64
        var id: UInt64
        static func < (a: Entry, b: Entry) -> Bool { (a.deadline, a.id) < (b.deadline, b.id) }
    }
    struct Record {
        var callback: () -> Void
        var interval: UInt64  // 0: one-shot
    }

    private var heap = Heap<Entry>()
    private var records: [UInt64: Record] = [:]
    private var nextID: UInt64 = 1

    var isEmpty: Bool { records.isEmpty }
    var count: Int { records.count }

    mutating func reserveID() -> UInt64 {
        defer { nextID += 1 }
        return nextID
    }

    mutating func schedule(id: UInt64, deadline: UInt64, interval: UInt64, _ callback: @escaping () -> Void) {
        records[id] = Record(callback: callback, interval: interval)
        heap.insert(Entry(deadline: deadline, id: id))
    }

    mutating func cancel(id: UInt64) { records[id] = nil }

    /// Nanoseconds until the earliest live deadline (0 if due), nil when there is none.
    mutating func nanosecondsUntilNext(now: UInt64) -> UInt64? {
        while let top = heap.min {
            if records[top.id] == nil {
                _ = heap.removeMin()
                continue
            }
            return top.deadline > now ? top.deadline - now : 0
        }
        return nil
    }

    /// Pops the next due timer's callback; reschedules it first when it repeats.
    mutating func popExpired(now: UInt64) -> (() -> Void)? {
        while let top = heap.min, top.deadline <= now {
            _ = heap.removeMin()
            guard let record = records[top.id] else { continue }
            if record.interval > 0 {
                // Next deadline from the scheduled one, not from now, so a periodic timer does not drift;
                // if we fell far behind, skip missed ticks instead of firing a burst.
                var next = top.deadline + record.interval
                if next <= now { next = now + record.interval }
                heap.insert(Entry(deadline: next, id: top.id))
            } else {
                records[top.id] = nil
            }
            return record.callback
        }
        return nil
    }

    mutating func removeAll() {
        heap = Heap()
        records = [:]
    }
}
