import Messaging
import Synchronization
import Testing

private struct Timeout: Error, Equatable { let key: Int }
private struct Closed: Error, Equatable {}

@Suite("RequestCorrelator (no sockets)")
struct RequestCorrelatorTests {
    @Test("a reply resumes the request of its key, and only that one")
    func replyByKey() async throws {
        let correlator = RequestCorrelator<Int, String>()
        let a = Task { try await correlator.request(1, deadline: .max, timeoutError: Timeout(key: 1)) {} }
        let b = Task { try await correlator.request(2, deadline: .max, timeoutError: Timeout(key: 2)) {} }
        while correlator.pendingCount < 2 { await Task.yield() }
        #expect(correlator.resume(2, with: "two") == 1)
        #expect(correlator.resume(1, with: "one") == 1)
        #expect(try await a.value == "one")
        #expect(try await b.value == "two")
        #expect(correlator.pendingCount == 0)
        #expect(correlator.resume(1, with: "late") == 0)
    }

    @Test("a reply that arrives while `send` runs, before the caller suspends, is not lost")
    func replyDuringSend() async throws {
        let correlator = RequestCorrelator<Int, String>()
        let reply = try await correlator.request(7, deadline: .max, timeoutError: Timeout(key: 7)) {
            #expect(correlator.resume(7, with: "fast") == 1)
        }
        #expect(reply == "fast")
        #expect(correlator.pendingCount == 0)
    }

    @Test("expire fails only the requests whose deadline has passed, with their own error")
    func expiry() async throws {
        let correlator = RequestCorrelator<Int, String>()
        let early = Task { try await correlator.request(1, deadline: 100, timeoutError: Timeout(key: 1)) {} }
        let late = Task { try await correlator.request(2, deadline: 200, timeoutError: Timeout(key: 2)) {} }
        while correlator.pendingCount < 2 { await Task.yield() }
        #expect(correlator.expire(now: 99) == 0)
        #expect(correlator.expire(now: 100) == 1)
        await #expect(throws: Timeout(key: 1)) { try await early.value }
        #expect(correlator.pendingCount == 1)
        #expect(correlator.resume(2, with: "in time") == 1)
        #expect(try await late.value == "in time")
    }

    @Test("several requests on one key all get the reply")
    func sharedKey() async throws {
        let correlator = RequestCorrelator<String, Int>()
        let a = Task { try await correlator.request("route", deadline: .max, timeoutError: Closed()) {} }
        let b = Task { try await correlator.request("route", deadline: .max, timeoutError: Closed()) {} }
        while correlator.pendingCount < 2 { await Task.yield() }
        #expect(correlator.resume("route", with: 42) == 2)
        #expect(try await a.value == 42)
        #expect(try await b.value == 42)
    }

    @Test("failAll ends every waiter and refuses later requests; a failing send removes its waiter")
    func closeAndSendFailure() async throws {
        let correlator = RequestCorrelator<Int, String>()
        await #expect(throws: Closed()) {
            try await correlator.request(1, deadline: .max, timeoutError: Timeout(key: 1)) { throw Closed() }
        }
        #expect(correlator.pendingCount == 0)
        let waiting = Task { try await correlator.request(2, deadline: .max, timeoutError: Timeout(key: 2)) {} }
        while correlator.pendingCount < 1 { await Task.yield() }
        correlator.failAll(Closed())
        await #expect(throws: Closed()) { try await waiting.value }
        let sent = Mutex(false)
        await #expect(throws: Closed()) {
            try await correlator.request(3, deadline: .max, timeoutError: Timeout(key: 3)) { sent.withLock { $0 = true } }
        }
        #expect(!sent.withLock { $0 }, "a closed correlator does not send")
    }

    @Test("a cancelled caller's request is removed")
    func cancellation() async throws {
        let correlator = RequestCorrelator<Int, String>()
        let task = Task { try await correlator.request(1, deadline: .max, timeoutError: Timeout(key: 1)) {} }
        while correlator.pendingCount < 1 { await Task.yield() }
        task.cancel()
        await #expect(throws: CancellationError.self) { try await task.value }
        #expect(correlator.pendingCount == 0)
    }
}

@Suite("HeartbeatPolicy (no sockets)")
struct HeartbeatPolicyTests {
    let ms: UInt64 = 1_000_000

    @Test("a heartbeat once nothing was sent for the interval; silence past the timeout is a dead peer")
    func decisions() {
        let policy = HeartbeatPolicy(interval: .milliseconds(100), silenceTimeout: .milliseconds(300))
        let start: UInt64 = 1_000 * ms
        #expect(policy.decide(now: start + 99 * ms, lastSent: start, lastReceived: start) == .idle)
        #expect(policy.decide(now: start + 100 * ms, lastSent: start, lastReceived: start) == .sendHeartbeat)
        #expect(policy.decide(now: start + 299 * ms, lastSent: start + 250 * ms, lastReceived: start) == .idle)
        #expect(policy.decide(now: start + 300 * ms, lastSent: start + 250 * ms, lastReceived: start) == .peerSilent)
        // A send stamped after `now` (another thread) is not a wrap-around to "long ago".
        #expect(policy.decide(now: start, lastSent: start + ms, lastReceived: start) == .idle)
    }

    @Test("without a silence timeout the peer never counts as gone; the timer runs at half the shorter period")
    func listenerAndCheckInterval() {
        let keepWarm = HeartbeatPolicy(interval: .seconds(2))
        #expect(keepWarm.decide(now: 1_000_000 * ms, lastSent: 999_999 * ms, lastReceived: 0) == .idle)
        #expect(keepWarm.checkInterval == .seconds(1))
        #expect(HeartbeatPolicy(interval: .seconds(2), silenceTimeout: .milliseconds(600)).checkInterval
            == .milliseconds(300))
        #expect(HeartbeatPolicy(interval: .microseconds(10)).checkInterval == .milliseconds(1))
    }
}
