import Chat
import Foundation
import Messaging
import Reactor
import Storage
import Synchronization
import Testing
import TestSupport

extension ChatSocketTests {
    @Suite("Users, rooms, presence") struct Basics {}
}

extension ChatSocketTests.Basics {
    /// With the production iteration count of the password KDF (the other tests use the minimum).
    @Test(arguments: PollerKind.allCases, TestDatabase.fileServersAndAgent)
    func registerLoginAndUniformErrors(poller: PollerKind, db: TestDatabase) async throws {
        let production = ChatConfiguration().passwordIterations
        let names = UniqueNames()
        let (alice, nobody) = (names("alice"), names("nobody"))
        let h = try await ChatHarness.start(poller: poller, databaseURL: db.url()) {
            $0.maxLoginFailures = 3
            $0.passwordIterations = production
        }
        let a = try await h.client()
        try await a.register(name: alice, password: "secret")
        await expectRefused(.nameTaken) { try await a.register(name: alice, password: "other") }
        await expectRefused(.badRequest) { try await a.register(name: "bad name", password: "x") }
        let token = try await a.login(name: alice, password: "secret")
        #expect(token.count == 32)
        await expectRefused(.alreadyLoggedIn) { try await a.login(name: alice, password: "secret") }

        // Wrong password and unknown user: the same code and the same words.
        let b = try await h.client()
        let wrong = await expectRefused(.invalidCredentials) { try await b.login(name: alice, password: "nope") }
        let unknown = await expectRefused(.invalidCredentials) { try await b.login(name: nobody, password: "nope") }
        #expect(wrong != nil && wrong == unknown.map { e -> ChatClientError in
            if case .refused(let code, let reason) = e { return .refused(code, reason) }
            return e
        })

        // Two more failures for alice reach the limit: even the right password is refused for a while.
        await expectRefused(.invalidCredentials) { try await b.login(name: alice, password: "nope2") }
        await expectRefused(.invalidCredentials) { try await b.login(name: alice, password: "nope3") }
        await expectRefused(.rateLimited) { try await b.login(name: alice, password: "secret") }
        #expect(h.server.statistics.failedLogins == 4)

        // Only a salted hash is stored, with the iterations it was made with.
        let row = try #require(try await h.pool.queryFirst(
            "SELECT salt, hash, iterations FROM chat_users WHERE name = ?", [.text(alice)]))
        let hash: [UInt8] = try row.decode("hash")
        let salt: [UInt8] = try row.decode("salt")
        #expect(hash.count == 32 && salt.count == 16)
        #expect(hash != Array("secret".utf8))
        #expect(try row.decode("iterations", as: Int.self) == production)
        #expect(hash == (try PasswordHasher.hash(password: "secret", salt: salt, iterations: production)))
        await h.stop([a, b])
    }

    @Test(arguments: PollerKind.allCases)
    func requestsBeforeLoginAreRefused(poller: PollerKind) async throws {
        let h = try await ChatHarness.start(poller: poller)
        let c = try await h.client()
        await expectRefused(.notLoggedIn) { try await c.join("lobby") }
        await expectRefused(.notLoggedIn) { _ = try await c.say("hi", in: "lobby") }
        await expectRefused(.notLoggedIn) { try await c.msg(to: "x", "hi") }
        await expectRefused(.notLoggedIn) { _ = try await c.friends() }
        await h.stop([c])
    }

    @Test(arguments: PollerKind.allCases)
    func joinAndBroadcastOrderWithSeveralClients(poller: PollerKind) async throws {
        let h = try await ChatHarness.start(poller: poller) { $0.messagesPerSecond = 10_000 }
        var clients: [ChatClient] = []
        for i in 0..<4 { clients.append(try await h.user("u\(i)")) }
        for (i, c) in clients.enumerated() {
            let joined = try await c.join("lobby")
            #expect(joined.memberCount == i + 1)
        }
        let rooms = try await clients[0].rooms()
        #expect(rooms.map(\.name) == ["lobby"] && rooms.first?.memberCount == 4)

        let perSender = 25
        let receivers = clients.map { c in Task { try await roomMessages(c, room: "lobby", count: 2 * perSender) } }
        try await withThrowingTaskGroup(of: Void.self) { group in
            for s in 0..<2 {
                let sender = clients[s]
                group.addTask { for k in 0..<perSender { try await sender.say("m\(s)-\(k)", in: "lobby") } }
            }
            try await group.waitForAll()
        }
        var first: [String]?
        for r in receivers {
            let got = try await r.value
            // Every member sees sequence 1...50, gap-free and in order, with the server's stamps.
            #expect(got.map(\.sequence) == (1...UInt64(2 * perSender)).map { $0 })
            #expect(got.allSatisfy { $0.sender == "u0" || $0.sender == "u1" })
            #expect(got.allSatisfy { $0.timeMs > 1_600_000_000_000 })
            // The same order for everyone, and each sender's messages in the order it sent them.
            let texts = got.map(\.text)
            if let first { #expect(texts == first) } else { first = texts }
            for s in 0..<2 {
                #expect(texts.filter { $0.hasPrefix("m\(s)-") } == (0..<perSender).map { "m\(s)-\($0)" })
            }
        }
        try await clients[3].leave("lobby")
        await expectRefused(.notInRoom) { try await clients[3].leave("lobby") }
        await expectRefused(.notInRoom) { _ = try await clients[3].say("x", in: "lobby") }
        #expect(try await clients[0].rooms().first?.memberCount == 3)
        await h.stop(clients)
    }

    @Test(arguments: PollerKind.allCases)
    func privateMessages(poller: PollerKind) async throws {
        let h = try await ChatHarness.start(poller: poller)
        let a = try await h.user("alice")
        let b = try await h.user("bob")
        try await a.msg(to: "bob", "psst")
        let event = try await nextEvent(b, "private message") {
            if case .privateMessage = $0 { return true }
            return false
        }
        guard case .privateMessage(let m) = event else { throw TestFailure("not a private message") }
        #expect(m.from == "alice" && m.to == "bob" && m.text == "psst")
        await expectRefused(.noSuchUser) { try await a.msg(to: "carol", "anyone?") }
        await h.stop([a, b])
    }

    @Test(arguments: PollerKind.allCases, TestDatabase.fileServersAndAgent)
    func historyOnJoinSurvivesRestart(poller: PollerKind, db: TestDatabase) async throws {
        let url = try db.url()
        let names = UniqueNames()
        let (alice, bob, news) = (names("alice"), names("bob"), names("news"))
        let h = try await ChatHarness.start(poller: poller, databaseURL: url) { $0.historyLength = 3 }
        let a = try await h.user(alice)
        try await a.join(news)
        for i in 1...5 { try await a.say("n\(i)", in: news) }
        let b = try await h.user(bob)
        let joined = try await b.join(news)
        #expect(joined.history.map(\.text) == ["n3", "n4", "n5"])
        #expect(joined.history.map(\.sequence) == [3, 4, 5])
        #expect(joined.history.allSatisfy { $0.sender == alice && $0.room == news })
        await h.stop([a, b])

        // A new server on the same database: history and sequence numbers continue.
        let h2 = try await ChatHarness.start(poller: poller, databaseURL: url) { $0.historyLength = 3 }
        let c = try await h2.user(alice, register: false)
        let again = try await c.join(news)
        #expect(again.history.map(\.text) == ["n3", "n4", "n5"])
        #expect(again.history.map(\.sequence) == [3, 4, 5])
        #expect(try await c.say("n6", in: news) == 6)
        await h2.stop([c])
    }

    @Test(arguments: PollerKind.allCases, TestDatabase.fileServersAndAgent)
    func friendsSeePresenceOnLoginAndLogout(poller: PollerKind, db: TestDatabase) async throws {
        let names = UniqueNames()
        let (alice, bob) = (names("alice"), names("bob"))
        let h = try await ChatHarness.start(poller: poller, databaseURL: db.url())
        let a = try await h.user(alice)
        let b = try await h.user(bob)
        await expectRefused(.noSuchUser) { try await a.addFriend(names("nobody")) }
        try await a.addFriend(bob)
        // Friendship goes both ways; each is told the other is online.
        try await nextEvent(a, "bob online") { $0 == .presence(user: bob, online: true) }
        try await nextEvent(b, "alice online") { $0 == .presence(user: alice, online: true) }
        #expect(try await a.friends().map { "\($0.name):\($0.online)" } == ["\(bob):true"])

        await b.close()
        try await nextEvent(a, "bob offline") { $0 == .presence(user: bob, online: false) }
        #expect(try await a.friends().map { "\($0.name):\($0.online)" } == ["\(bob):false"])

        let b2 = try await h.user(bob, register: false)
        try await nextEvent(a, "bob online again") { $0 == .presence(user: bob, online: true) }
        #expect(try await b2.friends().map { "\($0.name):\($0.online)" } == ["\(alice):true"])
        await h.stop([a, b2])
    }

    @Test(arguments: PollerKind.allCases)
    func silentClientTimesOutAndIsAnnouncedOffline(poller: PollerKind) async throws {
        // 5 s: Bob must still be online when Alice's friendship is stored (a database job that a loaded machine may
        // delay), or no presence is announced to her.
        let h = try await ChatHarness.start(poller: poller) { $0.idleTimeout = .seconds(5) }
        let a = try await h.user("alice", heartbeat: .milliseconds(100))
        let b = try await h.user("bob", heartbeat: nil)  // sends nothing once logged in
        try await a.addFriend("bob")
        try await nextEvent(a, timeout: 20, "bob offline after the idle timeout") {
            $0 == .presence(user: "bob", online: false)
        }
        // Bob's stream ends (the server closed him); Alice, who sends heartbeats, is still served.
        try await withTimeout(10, "bob's stream to end") { for await _ in b.events {} }
        #expect(try await a.friends().map(\.online) == [false])
        #expect(h.server.onlineUsers == ["alice"])
        await h.stop([a, b])
    }
}
