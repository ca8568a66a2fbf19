@testable import Chat
import Logging
import Reactor
import Storage
import SwiftProtobuf
import Testing
import TestSupport

/// `ChatCore` without sockets, storage or a clock: connection ids in, actions out; time is a variable the tests
/// advance, and the jobs' outcomes (storage, the KDF) are fed back by hand.
@Suite("Chat core (no sockets)")
struct ChatCoreTests {
    /// A mock clock: monotonic nanoseconds, advanced by the test.
    struct Clock {
        var now: UInt64 = 1_000_000_000
        mutating func advance(_ d: Duration) {
            now += UInt64(d.components.seconds) * 1_000_000_000 + UInt64(d.components.attoseconds / 1_000_000_000)
        }
    }

    let alice = ChatPeer(id: 1, loop: 0)
    let bob = ChatPeer(id: 2, loop: 1)
    let carol = ChatPeer(id: 3, loop: 0)

    static func configuration(_ configure: (inout ChatConfiguration) -> Void = { _ in }) -> ChatConfiguration {
        var c = ChatConfiguration(passwordIterations: PasswordHasher.minimumIterations)
        configure(&c)
        return c
    }

    /// Connects `peer` and logs it in as `name` with `friends`, checking the job and the reply on the way.
    func logIn(_ core: inout ChatCore, _ peer: ChatPeer, _ name: String, friends: Set<String> = [],
               clock: Clock, sourceLocation: SourceLocation = #_sourceLocation) -> [ChatAction] {
        _ = core.connected(peer, now: clock.now)
        var login = Switchyard_Chat_LoginRequest()
        login.requestID = 7
        login.name = name
        login.password = "pw"
        let actions = core.login(login, from: peer, now: clock.now)
        guard case .verifyLogin(let job)? = actions.first, actions.count == 1 else {
            Issue.record("expected a login job, got \(actions)", sourceLocation: sourceLocation)
            return []
        }
        #expect(job == LoginJob(peer: peer, requestID: 7, name: name, password: "pw"), sourceLocation: sourceLocation)
        let done = core.loginVerified(job, .verified(friends: friends, token: "t-\(name)"), now: clock.now)
        let reply = done.replies(Switchyard_Chat_LoginReply.self, .loginReply, to: peer)
        #expect(reply.map(\.status.code) == [.ok] && reply.first?.token == "t-\(name)", sourceLocation: sourceLocation)
        #expect(done.contains(.count(.login, 1)), sourceLocation: sourceLocation)
        return done
    }

    /// Joins `room` (loading it when new) and returns the join reply.
    func join(_ core: inout ChatCore, _ peer: ChatPeer, _ room: String,
              history: ChatCore.RoomHistory = .init(messages: [], lastSequence: 0)) -> Switchyard_Chat_JoinReply? {
        var r = Switchyard_Chat_JoinRequest()
        r.requestID = 9
        r.room = room
        var actions = core.join(r, from: peer)
        if case .loadRoom(let job)? = actions.first {
            #expect(job.room == room && job.peer == peer)
            actions = core.historyLoaded(job, history)
        }
        return actions.replies(Switchyard_Chat_JoinReply.self, .joinReply, to: peer).first
    }

    func say(_ core: inout ChatCore, _ peer: ChatPeer, _ text: String, in room: String, clock: Clock) -> [ChatAction] {
        var r = Switchyard_Chat_SayRequest()
        r.requestID = 11
        r.room = room
        r.text = text
        return core.say(r, from: peer, now: clock.now, unixMs: 1_700_000_000_000)
    }

    @Test func registerLoginJoinSayLeave() throws {
        var core = ChatCore(configuration: Self.configuration())
        let clock = Clock()
        _ = core.connected(alice, now: clock.now)

        var bad = Switchyard_Chat_RegisterRequest()
        bad.name = "bad name"
        bad.password = "x"
        #expect(core.register(bad, from: alice, now: 0).replies(Switchyard_Chat_RegisterReply.self, .registerReply,
                                                         to: alice).map(\.status.code) == [.badRequest])
        var register = Switchyard_Chat_RegisterRequest()
        register.requestID = 3
        register.name = "alice"
        register.password = "pw"
        let actions = core.register(register, from: alice, now: 0)
        guard case .register(let job)? = actions.first else { throw TestFailure("no register job: \(actions)") }
        #expect(job.iterations == PasswordHasher.minimumIterations && job.password == "pw")
        let created = core.registered(job, .created).replies(Switchyard_Chat_RegisterReply.self, .registerReply,
                                                             to: alice)
        #expect(created.map(\.requestID) == [3] && created.map(\.status.code) == [.ok])
        #expect(core.registered(job, .nameTaken).replies(Switchyard_Chat_RegisterReply.self, .registerReply,
                                                         to: alice).map(\.status.code) == [.nameTaken])

        // Before login: refused.
        var early = Switchyard_Chat_JoinRequest()
        early.room = "lobby"
        #expect(core.join(early, from: alice).replies(Switchyard_Chat_JoinReply.self, .joinReply, to: alice)
            .map(\.status.code) == [.notLoggedIn])

        _ = logIn(&core, alice, "alice", clock: clock)
        _ = logIn(&core, bob, "bob", clock: clock)
        #expect(core.onlineUsers == ["alice", "bob"])

        // The first join loads the room's history; the second finds it in memory.
        var old = Switchyard_Chat_RoomMessage()
        old.room = "lobby"
        old.sequence = 41
        old.text = "earlier"
        let first = try #require(join(&core, alice, "lobby", history: .init(messages: [old], lastSequence: 41)))
        #expect(first.status.code == .ok && first.memberCount == 1 && first.history.map(\.text) == ["earlier"])
        var r = Switchyard_Chat_JoinRequest()
        r.room = "lobby"
        let direct = core.join(r, from: bob)
        #expect(!direct.contains { if case .loadRoom = $0 { return true } else { return false } })
        #expect(direct.replies(Switchyard_Chat_JoinReply.self, .joinReply, to: bob).map(\.memberCount) == [2])

        // A message: the reply with the next sequence, one broadcast to both members, the history write.
        let said = say(&core, bob, "hello", in: "lobby", clock: clock)
        #expect(said.replies(Switchyard_Chat_SayReply.self, .sayReply, to: bob).map(\.sequence) == [42])
        let broadcasts = said.broadcasts
        #expect(broadcasts.count == 1)
        let (frame, members) = try #require(broadcasts.first)
        #expect(frame.id == .roomMessage && members.count == 2)
        #expect(members.byLoop == [0: [alice.id], 1: [bob.id]])
        let m = try frame.decode(as: Switchyard_Chat_RoomMessage.self)
        #expect(m.sender == "bob" && m.text == "hello" && m.sequence == 42 && m.timeMs == 1_700_000_000_000)
        #expect(said.contains(.appendHistory(m)) && said.contains(.count(.delivered, 2)))

        // Leave: out of the room, and its messages no longer reach bob.
        var leave = Switchyard_Chat_LeaveRequest()
        leave.room = "lobby"
        #expect(core.leave(leave, from: bob).replies(Switchyard_Chat_LeaveReply.self, .leaveReply, to: bob)
            .map(\.status.code) == [.ok])
        #expect(core.leave(leave, from: bob).replies(Switchyard_Chat_LeaveReply.self, .leaveReply, to: bob)
            .map(\.status.code) == [.notInRoom])
        #expect(say(&core, bob, "x", in: "lobby", clock: clock).replies(Switchyard_Chat_SayReply.self, .sayReply,
                                                                       to: bob).map(\.status.code) == [.notInRoom])
        #expect(say(&core, alice, "y", in: "lobby", clock: clock).broadcasts.first?.1.byLoop == [0: [alice.id]])
        #expect(core.memberCount(of: "lobby") == 1)
    }

    @Test func friendsSeePresenceOnLoginAndClose() throws {
        var core = ChatCore(configuration: Self.configuration())
        let clock = Clock()
        _ = logIn(&core, bob, "bob", friends: ["alice"], clock: clock)
        // Alice logs in: bob, her online friend, is told; carol (no friend) is not.
        _ = logIn(&core, carol, "carol", clock: clock)
        let login = logIn(&core, alice, "alice", friends: ["bob"], clock: clock)
        #expect(login.replies(Switchyard_Chat_PresenceEvent.self, .presenceEvent, to: bob).map(\.online) == [true])
        #expect(login.replies(Switchyard_Chat_PresenceEvent.self, .presenceEvent, to: carol).isEmpty)

        var list = Switchyard_Chat_FriendListRequest()
        list.requestID = 5
        let friends = core.listFriends(list, from: bob).replies(Switchyard_Chat_FriendListReply.self,
                                                                .friendListReply, to: bob)
        #expect(friends.first?.friends.map { "\($0.name):\($0.online)" } == ["alice:true"])

        // Alice's connection closes: bob is told she is offline.
        let closed = core.closed(alice.id)
        let events = closed.replies(Switchyard_Chat_PresenceEvent.self, .presenceEvent, to: bob)
        #expect(events.map { "\($0.user):\($0.online)" } == ["alice:false"])
        #expect(core.onlineUsers == ["bob", "carol"])

        // Friend add: after storage, each learns the other is online.
        var add = Switchyard_Chat_FriendAddRequest()
        add.name = "carol"
        guard case .addFriend(let job)? = core.addFriend(add, from: bob).first else {
            throw TestFailure("no friend job")
        }
        let stored = core.friendshipStored(job, .stored)
        #expect(stored.replies(Switchyard_Chat_FriendAddReply.self, .friendAddReply, to: bob).map(\.status.code)
            == [.ok])
        #expect(stored.replies(Switchyard_Chat_PresenceEvent.self, .presenceEvent, to: bob).map(\.user) == ["carol"])
        #expect(stored.replies(Switchyard_Chat_PresenceEvent.self, .presenceEvent, to: carol).map(\.user) == ["bob"])
    }

    @Test func rateLimitRefillsOverTime() throws {
        var core = ChatCore(configuration: Self.configuration { $0.messagesPerSecond = 2 })
        var clock = Clock()
        _ = logIn(&core, alice, "alice", clock: clock)
        _ = join(&core, alice, "r")
        func code() -> Switchyard_Chat_StatusCode? {
            say(&core, alice, "m", in: "r", clock: clock)
                .replies(Switchyard_Chat_SayReply.self, .sayReply, to: alice).first?.status.code
        }
        // A burst of 2 (the bucket starts full), then refused at the same instant.
        #expect([code(), code(), code()] == [.ok, .ok, .rateLimited])
        // Half a second refills one token (2 per second), no more.
        clock.advance(.milliseconds(500))
        #expect([code(), code()] == [.ok, .rateLimited])
        // A long pause refills to the burst, not beyond.
        clock.advance(.seconds(10))
        #expect([code(), code(), code()] == [.ok, .ok, .rateLimited])
        // The refusal is counted as a limit, and the sequence numbers have no gaps for the refused ones.
        let refused = say(&core, alice, "m", in: "r", clock: clock)
        #expect(refused.contains(.count(.limitRejection, 1)) && refused.broadcasts.isEmpty)
        clock.advance(.seconds(1))
        #expect(say(&core, alice, "m", in: "r", clock: clock)
            .replies(Switchyard_Chat_SayReply.self, .sayReply, to: alice).first?.sequence == 6)
    }

    @Test func loginThrottleLocksANameForTheWindow() throws {
        var core = ChatCore(configuration: Self.configuration {
            $0.maxLoginFailures = 3
            $0.loginFailureWindow = .seconds(60)
        })
        var clock = Clock()
        _ = core.connected(alice, now: clock.now)
        var login = Switchyard_Chat_LoginRequest()
        login.name = "alice"
        login.password = "wrong"
        func attempt() -> [ChatAction] { core.login(login, from: alice, now: clock.now) }
        for i in 1...3 {
            guard case .verifyLogin(let job)? = attempt().first else { throw TestFailure("attempt \(i) refused") }
            let failed = core.loginVerified(job, .invalidCredentials, now: clock.now)
            #expect(failed.replies(Switchyard_Chat_LoginReply.self, .loginReply, to: alice).map(\.status.code)
                == [.invalidCredentials])
            #expect(failed.contains(.count(.failedLogin, 1)))
            // The failure that reaches the limit is logged at info, the others only at debug.
            #expect(failed.logLevels.allSatisfy { $0 <= .info })
            #expect(failed.logLevels.contains(.info) == (i == 3))
            clock.advance(.seconds(1))
        }
        // Locked: refused without a job, for the whole window.
        let locked = attempt()
        #expect(locked.replies(Switchyard_Chat_LoginReply.self, .loginReply, to: alice).map(\.status.code)
            == [.rateLimited])
        #expect(!locked.containsJob)
        clock.advance(.seconds(58))
        #expect(!attempt().containsJob)
        // After the window: a try again, and a success resets the count.
        clock.advance(.seconds(2))
        guard case .verifyLogin(let job)? = attempt().first else { throw TestFailure("still locked") }
        _ = core.loginVerified(job, .verified(friends: [], token: "t"), now: clock.now)
        #expect(core.onlineUsers == ["alice"])
    }

    @Test func failuresSpreadOverMoreThanTheWindowDoNotLock() {
        var throttle = LoginThrottle(maxFailures: 2, window: .seconds(10))
        let a = LoginThrottle.Key(name: "a", source: 1)
        var now: UInt64 = 0
        func fail() -> Bool {
            guard throttle.begin(a, now: now) else { return false }
            return throttle.end(a, .failed, now: now)
        }
        let first = fail()
        now += 11_000_000_000
        let second = fail()  // a new window: one failure in it
        let allowedAfterOne = throttle.begin(a, now: now)
        throttle.end(a, .aborted, now: now)
        let third = fail()
        let (lockedA, allowedB) = (throttle.begin(a, now: now), throttle.begin(.init(name: "b", source: 1), now: now))
        #expect(!first && !second && allowedAfterOne)
        #expect(third && !lockedA && allowedB)
    }

    @Test func slowConsumerIsCutOffOnceAndLeavesItsRooms() throws {
        var core = ChatCore(configuration: Self.configuration {
            $0.maxQueuedOutputBytes = 1000
            $0.slowConsumerGrace = .seconds(3)
        })
        let clock = Clock()
        _ = logIn(&core, alice, "alice", clock: clock)
        _ = logIn(&core, bob, "bob", clock: clock)
        _ = join(&core, alice, "a")
        _ = join(&core, alice, "b")
        _ = join(&core, bob, "a")
        #expect(!core.isBacklogged(queuedBytes: 1000) && core.isBacklogged(queuedBytes: 1001))
        #expect(core.outputBacklogged(alice.id, queuedBytes: 1000).isEmpty)

        let cut = core.outputBacklogged(alice.id, queuedBytes: 5000)
        guard let cutOff = cut.first(where: { if case .cutOff = $0 { return true } else { return false } }),
              case .cutOff(let peer, let notice, let grace) = cutOff
        else { throw TestFailure("no cut-off: \(cut)") }
        #expect(peer == alice && grace == .seconds(3))
        #expect(try notice.decode(as: Switchyard_Chat_Notice.self).status.code == .slowConsumer)
        #expect(cut.contains(.count(.slowConsumerCutOff, 1)) && cut.logLevels == [.info])
        // Once only; out of both rooms; the others keep receiving without it.
        #expect(core.outputBacklogged(alice.id, queuedBytes: 9000).isEmpty)
        #expect(core.memberCount(of: "a") == 1 && core.memberCount(of: "b") == 0)
        #expect(say(&core, bob, "still here", in: "a", clock: clock).broadcasts.first?.1.byLoop == [1: [bob.id]])
        #expect(join(&core, alice, "a")?.status.code == .internalError)
    }

    @Test func aClosedConnectionLeavesItsRooms() throws {
        var core = ChatCore(configuration: Self.configuration())
        let clock = Clock()
        for (peer, name) in [(alice, "alice"), (bob, "bob"), (carol, "carol")] {
            _ = logIn(&core, peer, name, clock: clock)
            _ = join(&core, peer, "lobby")
        }
        _ = join(&core, carol, "side")
        #expect(core.memberCount(of: "lobby") == 3)
        _ = core.closed(carol.id)
        #expect(core.memberCount(of: "lobby") == 2 && core.memberCount(of: "side") == 0)
        #expect(core.onlineUsers == ["alice", "bob"])
        #expect(say(&core, alice, "hi", in: "lobby", clock: clock).broadcasts.first?.1.byLoop
            == [0: [alice.id], 1: [bob.id]])
        // Empty rooms are not listed.
        let rooms = core.listRooms(Switchyard_Chat_ListRoomsRequest(), from: alice)
            .replies(Switchyard_Chat_ListRoomsReply.self, .listRoomsReply, to: alice).first?.rooms
        #expect(rooms?.map { "\($0.name):\($0.memberCount)" } == ["lobby:2"])
        // A login that finishes after its connection closed changes nothing.
        _ = core.connected(ChatPeer(id: 9, loop: 1), now: clock.now)
        var login = Switchyard_Chat_LoginRequest()
        login.name = "dave"
        login.password = "pw"
        guard case .verifyLogin(let job)? = core.login(login, from: ChatPeer(id: 9, loop: 1), now: clock.now).first
        else { throw TestFailure("no login job") }
        _ = core.closed(9)
        #expect(core.loginVerified(job, .verified(friends: [], token: "t"), now: clock.now).isEmpty)
        #expect(core.onlineUsers == ["alice", "bob"])
    }

    @Test func aRoomThatCannotBeLoadedIsAnInternalError() {
        var core = ChatCore(configuration: Self.configuration())
        let clock = Clock()
        _ = logIn(&core, alice, "alice", clock: clock)
        var r = Switchyard_Chat_JoinRequest()
        r.room = "lobby"
        guard case .loadRoom(let job)? = core.join(r, from: alice).first else {
            Issue.record("no load job")
            return
        }
        #expect(core.historyLoaded(job, nil).replies(Switchyard_Chat_JoinReply.self, .joinReply, to: alice)
            .map(\.status.code) == [.internalError])
        #expect(core.memberCount(of: "lobby") == 0)
    }

    @Test func roomMembersSwapOnRemoval() {
        var members = RoomMembers()
        for id in UInt64(1)...5 { members.insert(ChatPeer(id: id, loop: Int(id % 2))) }
        let again = members.insert(ChatPeer(id: 3, loop: 1))
        let removed = members.remove(ChatPeer(id: 1, loop: 1))
        let removedTwice = members.remove(ChatPeer(id: 1, loop: 1))
        #expect(!again && removed && !removedTwice)
        #expect(members.byLoop[1]?.sorted() == [3, 5] && members.byLoop[0]?.sorted() == [2, 4])
        let rest = [members.remove(ChatPeer(id: 3, loop: 1)), members.remove(ChatPeer(id: 5, loop: 1))]
        #expect(rest == [true, true])
        #expect(members.byLoop[1] == nil && members.count == 2 && members.contains(4) && !members.contains(5))
    }
}

extension [ChatAction] {
    /// The messages of type `M` sent to `peer` with frame id `id`, in order.
    func replies<M: SwiftProtobuf.Message>(_ type: M.Type, _ id: ChatMessageID, to peer: ChatPeer) -> [M] {
        compactMap { action in
            guard case .send(let frame, let target) = action, target == peer, frame.id == id else { return nil }
            return try? frame.decode(as: M.self)
        }
    }

    var broadcasts: [(ChatFrame, RoomMembers)] {
        compactMap { if case .broadcast(let f, let m) = $0 { return (f, m) } else { return nil } }
    }

    var logLevels: [Logger.Level] {
        compactMap { if case .log(let level, _, _) = $0 { return level } else { return nil } }
    }

    var containsJob: Bool {
        contains { action in
            switch action {
            case .register, .verifyLogin, .loadRoom, .addFriend: return true
            default: return false
            }
        }
    }
}

@Suite("Chat configuration")
struct ChatConfigurationTests {
    @Test func defaultsAreValid() throws {
        try ChatConfiguration().validate()
    }

    @Test(arguments: [
        (ChatConfiguration(messagesPerSecond: 0), ChatConfigurationError.notPositive("messagesPerSecond", 0)),
        (ChatConfiguration(server: ServerConfiguration(port: 70_000)),
         .server(ConfigurationError("ServerConfiguration.port", "must be 0...65535, got 70000"))),
        (ChatConfiguration(historyLength: -1), .negativeHistoryLength(-1)),
        (ChatConfiguration(maxQueuedOutputBytes: 0), .notPositive("maxQueuedOutputBytes", 0)),
        (ChatConfiguration(passwordIterations: 1000), .tooFewIterations(1000)),
        (ChatConfiguration(maxLoginFailures: 0), .notPositive("maxLoginFailures", 0)),
        (ChatConfiguration(idleTimeout: .zero), .idleTimeoutNotPositive(.zero)),
        (ChatConfiguration(maxFrameBodyLength: 1024, maxMessageBytes: 4096),
         .messageLongerThanFrame(maxMessageBytes: 4096, maxFrameBodyLength: 1024)),
    ])
    func nonsenseIsRefusedWithItsName(configuration: ChatConfiguration, expected: ChatConfigurationError) {
        #expect(throws: expected) { try configuration.validate() }
        #expect("\(expected)".contains(" must "))
    }
}

extension ChatSocketTests.Command {
    /// `start()` checks the configuration before it touches the database or binds.
    @Test func startRefusesANonsenseConfiguration() async throws {
        let group = try EventLoopGroup(ioLoops: 1)
        let pool = try ConnectionPool(url: temporarySQLiteURL("chat-bad-config"), logger: quietLogger)
        let server = ChatServer(group: group, configuration: ChatConfiguration(maxRoomsPerUser: 0), pool: pool,
                                logger: quietLogger)
        await #expect(throws: ChatConfigurationError.notPositive("maxRoomsPerUser", 0)) { try await server.start() }
        #expect(server.localAddress == nil)
        await pool.close()
        await group.shutdown()
    }
}
