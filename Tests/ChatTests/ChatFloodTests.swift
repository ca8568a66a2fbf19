import Chat
import Foundation
import Messaging
import Reactor
import Storage
import SwiftProtobuf
import Synchronization
import Testing
import TestSupport

#if canImport(Glibc)
import Glibc
#endif

/// A blocking chat client whose socket is bound to a source address of its own (127.0.0.2): the per-source limits
/// tell it apart from a flood from 127.0.0.1. Used from a thread of its own (`onThread`), never a loop.
final class SourceBoundChat: @unchecked Sendable {
    // @unchecked Sendable: one thread uses it at a time (the test hands it to `onThread` and waits).
    let fd: Int32
    private var nextID: UInt32 = 1

    init(port: Int, source: String = "127.0.0.2") throws {
        fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { throw TestFailure("socket: errno \(errno)") }
        func address(_ host: String, _ port: Int) -> sockaddr_in {
            var sin = sockaddr_in()
            sin.sin_family = sa_family_t(AF_INET)
            sin.sin_port = UInt16(port).bigEndian
            inet_pton(AF_INET, host, &sin.sin_addr)
            return sin
        }
        func call(_ name: String, _ body: (UnsafePointer<sockaddr>, socklen_t) -> Int32, _ sin: sockaddr_in) throws {
            var sin = sin
            let r = withUnsafePointer(to: &sin) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { body($0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
            }
            if r < 0 {
                let e = errno
                Glibc.close(fd)
                throw TestFailure("\(name): errno \(e)")
            }
        }
        try call("bind", { bind(fd, $0, $1) }, address(source, 0))
        try call("connect", { Glibc.connect(fd, $0, $1) }, address("127.0.0.1", port))
        var tv = timeval(tv_sec: 30, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
    }

    deinit { Glibc.close(fd) }

    /// Sends `message` and returns the status of the first reply frame with `replyID` (others are skipped).
    func call<M: SwiftProtobuf.Message, R: SwiftProtobuf.Message>(
        _ message: M, id: ChatMessageID, reply: R.Type, replyID: ChatMessageID, status: (R) -> Switchyard_Chat_Status
    ) throws -> Switchyard_Chat_Status {
        let body: [UInt8] = try message.serializedBytes()
        var frame: [UInt8] = []
        for v in [id.rawValue, Int32(body.count)] { withUnsafeBytes(of: v.littleEndian) { frame += $0 } }
        frame += body
        try frame.withUnsafeBytes { raw in
            var off = 0
            while off < raw.count {
                let n = send(fd, raw.baseAddress! + off, raw.count - off, Int32(MSG_NOSIGNAL))
                if n <= 0 { throw TestFailure("send: errno \(errno)") }
                off += n
            }
        }
        while true {
            let header = try receive(8)
            let messageID = header.withUnsafeBytes { Int32(littleEndian: $0.loadUnaligned(as: Int32.self)) }
            let length = header.withUnsafeBytes { Int32(littleEndian: $0.loadUnaligned(fromByteOffset: 4, as: Int32.self)) }
            let body = try receive(Int(length))
            if messageID == replyID.rawValue { return status(try R(serializedBytes: body)) }
        }
    }

    private func receive(_ count: Int) throws -> [UInt8] {
        var out = [UInt8](repeating: 0, count: count)
        var got = 0
        while got < count {
            let n = out.withUnsafeMutableBytes { recv(fd, $0.baseAddress! + got, count - got, 0) }
            if n <= 0 { throw TestFailure("recv: \(n == 0 ? "closed" : "errno \(errno)") after \(got) of \(count)") }
            got += n
        }
        return out
    }

    func login(_ name: String, _ password: String) throws -> Switchyard_Chat_StatusCode {
        var r = Switchyard_Chat_LoginRequest()
        r.name = name
        r.password = password
        return try call(r, id: .loginRequest, reply: Switchyard_Chat_LoginReply.self, replyID: .loginReply) {
            $0.status
        }.code
    }

    func join(_ room: String) throws -> Switchyard_Chat_StatusCode {
        var r = Switchyard_Chat_JoinRequest()
        r.room = room
        return try call(r, id: .joinRequest, reply: Switchyard_Chat_JoinReply.self, replyID: .joinReply) {
            $0.status
        }.code
    }

    func say(_ text: String, in room: String) throws -> Switchyard_Chat_StatusCode {
        var r = Switchyard_Chat_SayRequest()
        r.room = room
        r.text = text
        return try call(r, id: .sayRequest, reply: Switchyard_Chat_SayReply.self, replyID: .sayReply) {
            $0.status
        }.code
    }
}


extension ChatSocketTests {
    @Suite("Floods from one peer") struct Floods {}
}

extension ChatSocketTests.Floods {
    /// A real user on 127.0.0.2 logs in, joins and says a message; returns the statuses and how long it took.
    func realUser(_ h: ChatHarness, _ name: String) async throws -> ([Switchyard_Chat_StatusCode], Duration) {
        let port = h.port
        return try await onThread {
            let start = ContinuousClock.now
            let c = try SourceBoundChat(port: port)
            let codes = [try c.login(name, "pw-\(name)"), try c.join("real-\(name)"), try c.say("hi", in: "real-\(name)")]
            return (codes, ContinuousClock.now - start)
        }
    }

    /// How long the same steps take with no flood (another user, registered first): the machine's own pace, which
    /// under the whole suite on 2 cores is far from the quiet figure.
    func quietBaseline(_ h: ChatHarness, _ names: UniqueNames) async throws -> Duration {
        let quiet = names("quiet")
        let setup = try await h.client()
        try await setup.register(name: quiet, password: "pw-\(quiet)")
        await setup.close()
        let (codes, took) = try await realUser(h, quiet)
        #expect(codes == [.ok, .ok, .ok])
        return took
    }

    /// The real user's bound during a flood: 3 s (the pool's acquire timeout is 5 s; before the limits the flood
    /// held real users for 15 s), or three times its time without the flood on a machine busy with other tests.
    func bound(_ baseline: Duration) -> Duration { max(.seconds(3), baseline * 3) }

    /// Pipelines `requests` on one raw connection and collects `count` replies with `replyID`, by status.
    func flood(_ raw: RawChat, count: Int, replyID: ChatMessageID, _ send: @escaping @Sendable (Int) async throws -> Void,
               status: @escaping @Sendable (InboundFrame) throws -> Switchyard_Chat_StatusCode)
        -> Task<[Switchyard_Chat_StatusCode: Int], any Error>
    {
        let frames = raw.frames
        return Task {
            async let sent: Void = { for i in 0..<count { try await send(i) } }()
            var codes: [Switchyard_Chat_StatusCode: Int] = [:]
            var got = 0
            for try await f in frames.frames where f.messageID == replyID.rawValue {
                codes[try status(f), default: 0] += 1
                got += 1
                if got == count { break }
            }
            try await sent
            return codes
        }
    }

    /// The real user from another address logs in and talks meanwhile.
    @Test("1,000 pipelined registrations on one connection: busy or rate-limited at once, never internal errors",
          arguments: PollerKind.allCases)
    func registrationFlood(poller: PollerKind) async throws {
        let h = try await ChatHarness.start(poller: poller)
        let names = UniqueNames()
        let owner = names("owner")
        let baseline = try await quietBaseline(h, names)
        let setup = try await h.client()
        try await setup.register(name: owner, password: "pw-\(owner)")
        await setup.close()
        let raw = try await RawChat.connect(port: h.port, loop: h.clientGroup.next(), bufferCapacity: 4096)
        let count = 1000
        let replies = flood(raw, count: count, replyID: .registerReply, { i in
            var r = Switchyard_Chat_RegisterRequest()
            r.requestID = UInt32(i)
            r.name = names("f\(i)")
            r.password = "pw"
            try await raw.frames.send(r, id: ChatMessageID.registerRequest)
        }, status: { try $0.decode(as: Switchyard_Chat_RegisterReply.self).status.code })
        #expect(await eventually(timeout: .seconds(30)) { h.server.statistics.busyRejections > 0 }, "the flood began")
        let (codes, took) = try await realUser(h, owner)
        #expect(codes == [.ok, .ok, .ok])
        #expect(took < bound(baseline), "the real user waited \(took), \(baseline) without the flood")
        let outcome = try await withTimeout(60, "the flood's replies") { try await replies.value }
        #expect(outcome[.internalError] == nil, "\(outcome)")
        #expect(Set(outcome.keys).isSubset(of: [.ok, .rateLimited]), "\(outcome)")
        #expect(outcome[.ok, default: 0] <= ChatConfiguration().registrationBurst, "the burst, then the rate: \(outcome)")
        let stats = h.server.statistics
        #expect(stats.busyRejections + stats.registrationsRateLimited == outcome[.rateLimited, default: 0])
        await raw.frames.close()
        await h.stop()
    }

    @Test("5,000 pipelined joins of new rooms from one connection: no internal errors, the real user is not held up")
    func joinFlood() async throws {
        let h = try await ChatHarness.start(poller: .epoll)
        let names = UniqueNames()
        let owner = names("owner")
        let baseline = try await quietBaseline(h, names)
        let setup = try await h.client()
        try await setup.register(name: owner, password: "pw-\(owner)")
        await setup.close()
        let raw = try await RawChat.connect(port: h.port, loop: h.clientGroup.next(), bufferCapacity: 8192)
        try await raw.registerAndLogin(names("flooder"))
        let count = 5000
        let replies = flood(raw, count: count, replyID: .joinReply, { i in
            var r = Switchyard_Chat_JoinRequest()
            r.room = names("room\(i)")
            try await raw.frames.send(r, id: ChatMessageID.joinRequest)
        }, status: { try $0.decode(as: Switchyard_Chat_JoinReply.self).status.code })
        #expect(await eventually(timeout: .seconds(30)) { h.server.statistics.busyRejections > 0 }, "the flood began")
        let (codes, took) = try await realUser(h, owner)
        #expect(codes == [.ok, .ok, .ok])
        #expect(took < bound(baseline), "the real user waited \(took), \(baseline) without the flood")
        let outcome = try await withTimeout(60, "the flood's replies") { try await replies.value }
        #expect(outcome[.internalError] == nil, "\(outcome)")
        #expect(Set(outcome.keys).isSubset(of: [.ok, .rateLimited, .limitExceeded]), "\(outcome)")
        #expect(outcome[.ok, default: 0] <= ChatConfiguration().maxRoomsPerUser, "\(outcome)")
        await raw.frames.close()
        await h.stop()
    }

    @Test("60 simultaneous wrong logins for one name: at most 5 hashed; the owner from another address logs in")
    func loginThrottleOverSockets() async throws {
        let h = try await ChatHarness.start(poller: .epoll) {
            $0.maxRequestsInFlightPerSource = 100  // the throttle, not the per-source cap, is under test
        }
        let names = UniqueNames()
        let owner = names("owner")
        let setup = try await h.client()
        try await setup.register(name: owner, password: "pw-\(owner)")
        await setup.close()
        let clients = try await withThrowingTaskGroup(of: RawChat.self) { group in
            for _ in 0..<60 { group.addTask { try await RawChat.connect(port: h.port, loop: h.clientGroup.next()) } }
            return try await group.reduce(into: []) { $0.append($1) }
        }
        let wrong = Switchyard_Chat_LoginRequest.with {
            $0.name = owner
            $0.password = "guess"
        }
        let codes = try await withThrowingTaskGroup(of: Switchyard_Chat_StatusCode.self) { group in
            for c in clients {
                group.addTask {
                    try await c.call(wrong, id: ChatMessageID.loginRequest, replyID: ChatMessageID.loginReply)
                        .decode(as: Switchyard_Chat_LoginReply.self).status.code
                }
            }
            return try await group.reduce(into: [Switchyard_Chat_StatusCode: Int]()) { $0[$1, default: 0] += 1 }
        }
        #expect(codes[.invalidCredentials, default: 0] <= 5 && codes[.invalidCredentials, default: 0] >= 1, "\(codes)")
        #expect(codes[.invalidCredentials, default: 0] + codes[.rateLimited, default: 0] == 60, "\(codes)")
        #expect(h.server.statistics.failedLogins <= 5, "hashed and failed: \(h.server.statistics.failedLogins)")
        let (ownerCodes, _) = try await realUser(h, owner)
        #expect(ownerCodes == [.ok, .ok, .ok], "the owner, from 127.0.0.2, is not locked out")
        for c in clients { await c.frames.close() }
        await h.stop()
    }

    @Test("a room name of one character and 64 KB is refused; 300 join/leave cycles of distinct rooms leave no room")
    func roomNamesInBytesAndRoomsFreed() async throws {
        let h = try await ChatHarness.start(poller: .epoll)
        let names = UniqueNames()
        let a = try await h.user(names("alice"))
        await expectRefused(.limitExceeded) { _ = try await a.join("a" + String(repeating: "\u{0301}", count: 32_000)) }
        for i in 0..<300 {
            let room = names("cycle\(i)")
            _ = try await a.join(room)
            try await a.leave(room)
        }
        #expect(await eventually { h.server.roomCount == 0 }, "rooms left: \(h.server.roomCount)")
        // A freed room comes back with its history and sequence from the database.
        let room = names("kept")
        _ = try await a.join(room)
        #expect(try await a.say("one", in: room) == 1)
        try await a.leave(room)
        #expect(h.server.roomCount == 0)
        let again = try await a.join(room)
        #expect(again.history.map(\.text) == ["one"])
        #expect(try await a.say("two", in: room) == 2)
        await h.stop([a])
    }
}
