import Chat
import Foundation
import Messaging
import Reactor
import Storage
import Synchronization
import Testing
import TestSupport

extension ChatSocketTests {
    @Suite("Limits, slow consumers, bad frames") struct Limits {}
}

extension ChatSocketTests.Limits {
    @Test(arguments: PollerKind.allCases)
    func limitsGetErrorRepliesAndTheServerGoesOn(poller: PollerKind) async throws {
        let h = try await ChatHarness.start(poller: poller) {
            $0.maxMessageBytes = 100
            $0.maxRoomNameBytes = 10
            $0.maxRoomsPerUser = 2
            $0.messagesPerSecond = 5
        }
        let a = try await h.user("alice")
        await expectRefused(.limitExceeded) { try await a.join(String(repeating: "r", count: 11)) }
        await expectRefused(.badRequest) { try await a.join("has space") }
        try await a.join("r1")
        try await a.join("r2")
        await expectRefused(.limitExceeded) { try await a.join("r3") }
        await expectRefused(.limitExceeded) { _ = try await a.say(String(repeating: "x", count: 101), in: "r1") }
        await expectRefused(.limitExceeded) { try await a.msg(to: "alice", String(repeating: "x", count: 101)) }

        // A burst past 5 per second, sent at once (one request after another would let a slow machine refill the
        // bucket between them): the first ones pass, then rate-limited replies.
        let outcomes = try await withThrowingTaskGroup(of: Bool.self) { group in
            for i in 0..<12 {
                group.addTask {
                    do {
                        _ = try await a.say("burst \(i)", in: "r1")
                        return true
                    } catch let e as ChatClientError where e.code == .rateLimited {
                        return false
                    }
                }
            }
            return try await group.reduce(into: [Bool]()) { $0.append($1) }
        }
        let accepted = outcomes.filter { $0 }.count
        let limited = outcomes.count - accepted
        #expect(accepted >= 5 && accepted < 12 && limited > 0, "accepted \(accepted), limited \(limited)")
        #expect(h.server.statistics.limitRejections >= 4 + limited)

        // Still served: leave one room, join another; wait for the bucket to refill through the reply path.
        try await a.leave("r2")
        try await a.join("r3")
        #expect(await eventually(timeout: .seconds(5)) { (try? await a.say("later", in: "r3")) != nil },
                "the rate limit to refill")
        await h.stop([a])
    }

    @Test(arguments: PollerKind.allCases)
    func slowConsumerIsCutOffWhileOthersKeepReceiving(poller: PollerKind) async throws {
        let h = try await ChatHarness.start(poller: poller) {
            $0.maxQueuedOutputBytes = 64 * 1024
            $0.maxMessageBytes = 32 * 1024
            $0.messagesPerSecond = 100_000
            $0.slowConsumerGrace = .seconds(10)
            $0.historyLength = 0
        }
        let sender = try await h.user("sender")
        let fast = try await h.user("fast")
        try await sender.join("firehose")
        try await fast.join("firehose")
        // The slow member reads nothing once its 2-frame inbox is full, so its socket stops draining.
        let slow = try await RawChat.connect(port: h.port, loop: h.clientGroup.next(), bufferCapacity: 2)
        try await slow.registerAndLogin("slow")
        var join = Switchyard_Chat_JoinRequest()
        join.room = "firehose"
        _ = try await slow.call(join, id: ChatMessageID.joinRequest, replyID: ChatMessageID.joinReply)
        #expect(h.server.memberCount(of: "firehose") == 3)

        let text = String(repeating: "z", count: 32 * 1024)
        var sent = try await withTimeout(60, "the slow member to be cut off") {
            var n = 0
            while h.server.statistics.slowConsumersDisconnected == 0 {
                try await sender.say(text, in: "firehose")
                n += 1
                if n > 5_000 { throw TestFailure("no cut-off after \(n) messages") }
            }
            return n
        }
        for _ in 0..<20 { try await sender.say(text, in: "firehose") }
        sent += 20
        // The others got everything, in order, and the slow one is no longer a member.
        let got = try await roomMessages(fast, room: "firehose", count: sent, timeout: 60)
        #expect(got.map(\.sequence) == (1...UInt64(sent)).map { $0 })
        #expect(h.server.memberCount(of: "firehose") == 2)
        #expect(h.server.statistics.slowConsumersDisconnected == 1)

        // Draining the slow socket now: its frames, then the notice, then the end of the stream.
        let notice = try await withTimeout(30, "the slow member's notice and close") {
            var notice: Switchyard_Chat_Notice?
            for try await f in slow.frames.frames where f.messageID == ChatMessageID.notice.rawValue {
                notice = try f.decode(as: Switchyard_Chat_Notice.self)
            }
            return notice
        }
        #expect(notice?.status.code == .slowConsumer)
        await slow.frames.close()
        await h.stop([sender, fast])
    }

    @Test(arguments: PollerKind.allCases)
    func garbageFrameClosesOnlyTheSender(poller: PollerKind) async throws {
        let h = try await ChatHarness.start(poller: poller)
        let a = try await h.user("alice")
        let b = try await h.user("bob")
        try await a.join("lobby")
        try await b.join("lobby")
        // A body that is not a SayRequest: that connection is closed.
        let raw = try await AsyncFrameClient.connect(port: h.port, loop: h.clientGroup.next())
        try await raw.send(messageID: ChatMessageID.sayRequest.rawValue, body: [0xFF, 0xFF, 0xFF])
        try await withTimeout(10, "the undecodable body to close its connection") {
            for try await _ in raw.frames {}
        }
        // A header with a negative body length: closed too.
        try await sendRawBytes(port: h.port, [204, 0, 0, 0, 0xFF, 0xFF, 0xFF, 0xFF])
        #expect(h.server.frameStatistics.protocolErrors == 2)
        // The others are unaffected.
        #expect(try await a.say("still here", in: "lobby") == 1)
        let got = try await roomMessages(b, room: "lobby", count: 1)
        #expect(got.map(\.text) == ["still here"])
        #expect(h.server.onlineUsers == ["alice", "bob"])
        await h.stop([a, b])
    }
}

/// Connects with a plain blocking socket, writes `bytes` and waits (5 s) for the server to close the connection.
func sendRawBytes(port: Int, _ bytes: [UInt8]) async throws {
    try await withCheckedThrowingContinuation { (c: CheckedContinuation<Void, Error>) in
        Thread.detachNewThread {
            c.resume(with: Result { try RawSocket.sendAndAwaitClose(port: port, bytes) })
        }
    }
}
