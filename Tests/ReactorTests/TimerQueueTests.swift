@testable import Reactor
import Testing

/// Drives a `TimerQueue` with a hand-moved clock (nanoseconds) and records which timers fire.
private struct Clocked {
    var queue = TimerQueue()
    var now: UInt64 = 1_000
    /// Ids in firing order (a class so the callbacks can append).
    final class Log { var fired: [String] = [] }
    let log = Log()

    mutating func schedule(_ name: String, id: UInt64, after delay: UInt64, every interval: UInt64 = 0) {
        let log = self.log
        queue.schedule(id: id, deadline: now + delay, interval: interval) { log.fired.append(name) }
    }

    /// Moves the clock to `time` and fires what is due, as the loop does.
    mutating func advance(to time: UInt64) {
        now = time
        while let callback = queue.popExpired(now: now) { callback() }
    }

    mutating func fired() -> [String] {
        defer { log.fired.removeAll() }
        return log.fired
    }
}

@Suite("TimerQueue: ordering, equal deadlines, cancel, repeat (no loop, a hand-moved clock)")
struct TimerQueueTests {
    @Test("timers fire in deadline order, whatever the order they were scheduled in",
          arguments: [[30, 10, 20], [10, 20, 30], [20, 30, 10], [5, 5_000, 50]])
    func deadlineOrder(delays: [UInt64]) {
        var c = Clocked()
        for (i, d) in delays.enumerated() { c.schedule("t\(d)", id: UInt64(i + 1), after: d) }
        c.advance(to: c.now + 10_000)
        #expect(c.fired() == delays.sorted().map { "t\($0)" })
        #expect(c.queue.isEmpty)
    }

    @Test("equal deadlines fire in the order they were scheduled (by id)")
    func equalDeadlines() {
        var c = Clocked()
        for id in [3, 1, 2, 5, 4] as [UInt64] { c.schedule("id\(id)", id: id, after: 100) }
        c.advance(to: c.now + 100)
        #expect(c.fired() == ["id1", "id2", "id3", "id4", "id5"])
    }

    @Test("nothing fires before its deadline; the time to the next deadline is exact, 0 when due, nil when empty")
    func nanosecondsUntilNext() {
        var c = Clocked()
        #expect(c.queue.nanosecondsUntilNext(now: c.now) == nil)
        c.schedule("a", id: 1, after: 500)
        c.schedule("b", id: 2, after: 200)
        #expect(c.queue.nanosecondsUntilNext(now: c.now) == 200)
        c.advance(to: c.now + 199)
        #expect(c.fired() == [])
        #expect(c.queue.nanosecondsUntilNext(now: c.now) == 1)
        c.advance(to: c.now + 1)
        #expect(c.fired() == ["b"])
        #expect(c.queue.nanosecondsUntilNext(now: c.now + 1_000) == 0)
        c.advance(to: c.now + 1_000)
        #expect(c.fired() == ["a"])
        #expect(c.queue.nanosecondsUntilNext(now: c.now) == nil)
    }

    @Test("a cancelled timer never fires and no longer sets the next deadline; cancelling twice or late is harmless")
    func cancel() {
        var c = Clocked()
        c.schedule("a", id: 1, after: 100)
        c.schedule("b", id: 2, after: 200)
        c.queue.cancel(id: 1)
        #expect(c.queue.count == 1)
        #expect(c.queue.nanosecondsUntilNext(now: c.now) == 200)
        c.queue.cancel(id: 1)
        c.advance(to: c.now + 1_000)
        #expect(c.fired() == ["b"])
        c.queue.cancel(id: 2)  // already fired
        c.queue.cancel(id: 99)  // never existed
        #expect(c.queue.isEmpty)
    }

    @Test("a repeating timer fires every interval from its schedule (no drift), skips missed ticks, stops on cancel")
    func repeating() {
        var c = Clocked()
        let start = c.now
        c.schedule("r", id: 1, after: 100, every: 100)
        for tick in 1...5 {
            c.advance(to: start + UInt64(tick) * 100 + 7)  // a little late each time: the next is still on the grid
            #expect(c.fired() == ["r"])
            #expect(c.queue.nanosecondsUntilNext(now: c.now) == 93)
        }
        // Far behind: one firing, not a burst, and the next a full interval later.
        c.advance(to: start + 5_000)
        #expect(c.fired() == ["r"])
        #expect(c.queue.nanosecondsUntilNext(now: c.now) == 100)
        c.queue.cancel(id: 1)
        c.advance(to: c.now + 10_000)
        #expect(c.fired() == [])
        #expect(c.queue.isEmpty)
    }

    @Test("a repeating timer and one-shots interleave by deadline")
    func repeatingAmongOneShots() {
        var c = Clocked()
        let start = c.now
        c.schedule("r", id: 1, after: 100, every: 100)
        c.schedule("once150", id: 2, after: 150)
        c.schedule("once300", id: 3, after: 300)
        c.advance(to: start + 151)
        #expect(c.fired() == ["r", "once150"])
        c.advance(to: start + 201)
        #expect(c.fired() == ["r"])
        // Equal deadlines at 300: the earlier-scheduled timer (the repeating one) first.
        c.advance(to: start + 301)
        #expect(c.fired() == ["r", "once300"])
        #expect(c.queue.count == 1)
    }

    @Test("removeAll forgets every timer")
    func removeAll() {
        var c = Clocked()
        for id in 1...10 as ClosedRange<UInt64> { c.schedule("t", id: id, after: id * 10, every: id % 2 == 0 ? 5 : 0) }
        #expect(c.queue.count == 10)
        c.queue.removeAll()
        #expect(c.queue.isEmpty)
        c.advance(to: c.now + 1_000_000)
        #expect(c.fired() == [])
    }
}
