@testable import Chat
import Logging
import SwiftProtobuf
import Testing
import TestSupport

/// The per-source limits, the login throttle by (name, source), byte limits and freed rooms, on the core and its pure
/// types with a mock clock.
extension ChatCoreTests {
    static let second: UInt64 = 1_000_000_000

    @Test func registrationTokenBucketPerSource() {
        var limiter = SourceRateLimiter(perMinute: 6, burst: 3)
        var now: UInt64 = 5 * Self.second
        func take(_ source: UInt32) -> Bool { limiter.take(source, now: now) }
        let burst = (0..<4).map { _ in take(1) }
        #expect(burst == [true, true, true, false], "the burst, then empty")
        #expect(take(2), "another source has its own bucket")
        now += 9 * Self.second
        #expect(!take(1), "6 a minute: one token takes 10 s")
        now += 1 * Self.second
        #expect(take(1) && !take(1))
        now += 3600 * Self.second
        #expect((0..<4).map { _ in take(1) } == [true, true, true, false], "refilled to the burst")
    }

    @Test func loginThrottleCountsAttemptsInFlightAndLocksThePairWithBackoff() {
        var throttle = LoginThrottle(maxFailures: 5, window: .seconds(60), maxLockout: .seconds(200))
        let attacker = LoginThrottle.Key(name: "alice", source: 0x0A00_0001)
        let owner = LoginThrottle.Key(name: "alice", source: 0x0A00_0002)
        var now: UInt64 = Self.second
        func begin(_ key: LoginThrottle.Key) -> Bool { throttle.begin(key, now: now) }
        // 60 at once: only 5 begin; the others are refused before any hash.
        let begun = (0..<60).filter { _ in begin(attacker) }.count
        #expect(begun == 5)
        #expect(begin(owner), "the owner, from another address, is not locked out")
        throttle.end(owner, .succeeded, now: now)
        let locks = (0..<5).map { _ in throttle.end(attacker, .failed, now: now) }
        #expect(locks == [false, false, false, false, true], "the fifth failure locks the pair")
        #expect(begin(owner), "still not locked out")
        throttle.end(owner, .succeeded, now: now)
        now += 59 * Self.second
        #expect(!begin(attacker), "locked for the window")
        now += 2 * Self.second
        // The second lock lasts twice as long.
        for _ in 0..<5 {
            #expect(begin(attacker))
            throttle.end(attacker, .failed, now: now)
        }
        now += 119 * Self.second
        #expect(!begin(attacker), "120 s the second time")
        now += 2 * Self.second
        for _ in 0..<5 {
            #expect(begin(attacker))
            throttle.end(attacker, .failed, now: now)
        }
        now += 199 * Self.second
        #expect(!begin(attacker), "capped at maxLockout (200 s), not 240 s")
        now += 2 * Self.second
        #expect(begin(attacker))
        // An aborted attempt (storage failed) does not count as a failure.
        throttle.end(attacker, .aborted, now: now)
        for _ in 0..<4 {
            #expect(begin(attacker))
            throttle.end(attacker, .failed, now: now)
        }
        #expect(begin(attacker), "4 failures and 1 abort: one more try")
    }

    @Test func requestsInFlightAreCappedPerConnectionAndPerSource() {
        var core = ChatCore(configuration: Self.configuration {
            $0.maxRequestsInFlightPerConnection = 2
            $0.maxRequestsInFlightPerSource = 3
            $0.registrationsPerMinute = nil
        })
        let a = ChatPeer(id: 1, loop: 0, source: 7)
        let b = ChatPeer(id: 2, loop: 1, source: 7)
        let c = ChatPeer(id: 4, loop: 1, source: 7)
        let other = ChatPeer(id: 3, loop: 0, source: 8)
        for peer in [a, b, c, other] { _ = core.connected(peer, now: 0) }
        func register(_ peer: ChatPeer, _ name: String) -> [ChatAction] {
            var r = Switchyard_Chat_RegisterRequest()
            r.name = name
            r.password = "pw"
            return core.register(r, from: peer, now: 0)
        }
        func status(_ actions: [ChatAction], _ peer: ChatPeer) -> [Switchyard_Chat_StatusCode] {
            actions.replies(Switchyard_Chat_RegisterReply.self, .registerReply, to: peer).map(\.status.code)
        }
        var jobs: [RegisterJob] = []
        for (peer, name) in [(a, "a1"), (a, "a2")] {
            let actions = register(peer, name)
            guard case .register(let job)? = actions.first else {
                Issue.record("expected a job, got \(actions)")
                return
            }
            jobs.append(job)
        }
        let third = register(a, "a3")
        #expect(status(third, a) == [.rateLimited] && !third.containsJob, "a connection's third is busy at once")
        #expect(third.contains(.count(.busyRejection, 1)))
        #expect(third.logLevels.contains(.info), "the episode's one line")
        #expect(register(b, "b1").containsJob, "the source's third, on another connection")
        let fourth = register(b, "b2")
        #expect(status(fourth, b) == [.rateLimited], "the source's fourth is busy")
        #expect(!fourth.logLevels.contains(.info), "no second line in the episode")
        #expect(register(other, "o1").containsJob, "another source is not affected")
        // A reply frees a slot; a closed connection's jobs still count for its source until they end.
        _ = core.registered(jobs[0], .created)
        #expect(register(b, "b3").containsJob)
        _ = core.closed(a.id)
        #expect(status(register(c, "c1"), c) == [.rateLimited], "a's job in flight still counts for the source")
        _ = core.registered(jobs[1], .created)
        #expect(core.jobsBySource[7] == 2)
    }

    @Test func registrationsAreRateLimitedPerSource() {
        var core = ChatCore(configuration: Self.configuration {
            $0.registrationsPerMinute = 60
            $0.registrationBurst = 2
        })
        let peer = ChatPeer(id: 1, loop: 0, source: 9)
        _ = core.connected(peer, now: 0)
        var outcomes: [Bool] = []
        for i in 0..<3 {
            var r = Switchyard_Chat_RegisterRequest()
            r.name = "u\(i)"
            r.password = "pw"
            let actions = core.register(r, from: peer, now: 0)
            if case .register(let job)? = actions.first {
                outcomes.append(true)
                _ = core.registered(job, .created)
            } else {
                outcomes.append(false)
                #expect(actions.contains(.count(.registrationRateLimited, 1)))
            }
        }
        #expect(outcomes == [true, true, false])
        var r = Switchyard_Chat_RegisterRequest()
        r.name = "later"
        r.password = "pw"
        let later = core.register(r, from: peer, now: Self.second)
        #expect(later.containsJob, "one a second")
    }

    @Test func roomNamesAreLimitedInBytesNotCharacters() {
        var core = ChatCore(configuration: Self.configuration())
        var clock = Clock()
        _ = logIn(&core, alice, "alice", clock: clock)
        let name = "a" + String(repeating: "\u{0301}", count: 32_000)
        #expect(name.count == 1 && name.utf8.count == 64_001)
        var r = Switchyard_Chat_JoinRequest()
        r.room = name
        let actions = core.join(r, from: alice)
        let reply = actions.replies(Switchyard_Chat_JoinReply.self, .joinReply, to: alice)
        #expect(reply.map(\.status.code) == [.limitExceeded] && reply.first?.room == "", "refused, not echoed")
        #expect(!actions.containsJob && core.rooms.isEmpty)
        clock.advance(.seconds(1))
        #expect(join(&core, alice, String(repeating: "é", count: 64))?.status.code == .ok, "128 bytes fit")
        #expect(join(&core, alice, String(repeating: "é", count: 65))?.status.code == .limitExceeded)
    }

    @Test func roomsWithoutMembersOrLoadsAreFreed() {
        var core = ChatCore(configuration: Self.configuration())
        let clock = Clock()
        _ = logIn(&core, alice, "alice", clock: clock)
        for i in 0..<10_000 {
            let room = "room-\(i)"
            _ = join(&core, alice, room)
            var leave = Switchyard_Chat_LeaveRequest()
            leave.room = room
            _ = core.leave(leave, from: alice)
        }
        #expect(core.rooms.isEmpty && core.loadsInFlight.isEmpty)
        // A room a load is under way for stays until the load is done; then it goes when nobody is in it.
        _ = logIn(&core, bob, "bob", clock: clock)
        _ = join(&core, alice, "kept")
        var r = Switchyard_Chat_JoinRequest()
        r.room = "pending"
        guard case .loadRoom(let pending)? = core.join(r, from: bob).first else {
            Issue.record("expected a load")
            return
        }
        _ = core.closed(bob.id)
        #expect(core.loadsInFlight["pending"] == 1)
        _ = core.historyLoaded(pending, .init(messages: [], lastSequence: 4))
        #expect(Set(core.rooms.keys) == ["kept"], "the closed joiner's room is freed once loaded")
        _ = core.closed(alice.id)
        #expect(core.rooms.isEmpty)
    }
}
