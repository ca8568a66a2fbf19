import Chat
import Messaging
import Reactor
import Synchronization

/// A chat user for the benchmarks, lighter than `ChatClient` so that a thousand of them in the measuring process
/// leave the cores to the server: a `FramedClient` whose handlers run on its loop and walk register -> login ->
/// join, then count the room messages it receives and their delivery latency (the text starts with the sender's
/// monotonic send time in nanoseconds).
public final class BenchMember: Sendable {
    public let name: String
    public let room: String
    private let client: FramedClient
    private final class Tally: Sendable {
        let latencies = Mutex<[UInt64]>([])
        let ready = Atomic<Bool>(false)
    }
    private let tally = Tally()

    /// Starts connecting at once; `onReady` runs (on the member's loop) once the member is in its room, or with a
    /// reason when a step failed.
    public init(name: String, room: String, host: String, port: Int, loop: EventLoop, heartbeat: Duration?,
         onReady: @escaping @Sendable (String?) -> Void) throws {
        self.name = name
        self.room = room
        let router = MessageRouter<TCPConnection>()
        let tally = self.tally
        @Sendable func fail(_ reason: String) { onReady(reason) }
        try router.on(ChatMessageID.registerReply, as: Switchyard_Chat_RegisterReply.self) { reply, message in
            guard reply.status.code == .ok || reply.status.code == .nameTaken else {
                return fail("register \(name): \(reply.status.reason)")
            }
            var login = Switchyard_Chat_LoginRequest()
            login.name = name
            login.password = "bench"
            message.connection.send(login, id: ChatMessageID.loginRequest)
        }
        try router.on(ChatMessageID.loginReply, as: Switchyard_Chat_LoginReply.self) { reply, message in
            guard reply.status.code == .ok else { return fail("login \(name): \(reply.status.reason)") }
            var join = Switchyard_Chat_JoinRequest()
            join.room = room
            message.connection.send(join, id: ChatMessageID.joinRequest)
        }
        try router.on(ChatMessageID.joinReply, as: Switchyard_Chat_JoinReply.self) { reply, _ in
            guard reply.status.code == .ok else { return fail("join \(name): \(reply.status.reason)") }
            tally.ready.store(true, ordering: .relaxed)
            onReady(nil)
        }
        try router.on(ChatMessageID.roomMessage) { message in
            // Only the text's leading send time is needed: decode the message, read the number.
            guard let m = try? Switchyard_Chat_RoomMessage(serializedBytes: message.body.bytes) else { return }
            let sent = UInt64(m.text.prefix(while: { $0 != " " })) ?? 0
            let now = SystemInfo.monotonicNanoseconds()
            tally.latencies.withLock { $0.append(now &- sent) }
        }
        for id in [ChatMessageID.presenceEvent, ChatMessageID.notice, ChatMessageID.sayReply] {
            try router.on(id) { _ in }
        }
        client = try FramedClient(
            loop: loop,
            configuration: FramedClientConfiguration(
                client: ClientConfiguration(host: host, port: port, connectTimeout: .seconds(30), reconnect: false),
                heartbeatInterval: heartbeat),
            router: router,
            onConnect: { connection in
                var register = Switchyard_Chat_RegisterRequest()
                register.name = name
                register.password = "bench"
                connection.send(register, id: ChatMessageID.registerRequest)
            },
            onClose: { _ in
                if !tally.ready.load(ordering: .relaxed) { fail("\(name): connection closed during setup") }
            },
            onConnectFailed: { error in fail("\(name): cannot connect: \(error)") })
        client.connect()
    }

    /// Delivery latencies (ns) of the room messages received so far.
    public var received: [UInt64] { tally.latencies.withLock { $0 } }
    public var receivedCount: Int { tally.latencies.withLock { $0.count } }

    public func close() { client.disconnect() }

    /// Connects `count` members named `m0`, `m1`, ...; member i joins `rooms[i % rooms.count]`; at most
    /// `inFlight` in setup at once (the server's password KDF is the slow part). Returns them in order once all
    /// are in, or throws the first failure.
    public static func connect(count: Int, host: String = "127.0.0.1", port: Int, loops: [EventLoop], rooms: [String],
                        heartbeat: Duration?, inFlight: Int = 32,
                        progress: @escaping @Sendable (Int) -> Void = { _ in }) async throws -> [BenchMember] {
        let (outcomes, sink) = AsyncStream.makeStream(of: String?.self)
        var members: [BenchMember] = []
        members.reserveCapacity(count)
        func startNext() throws {
            let i = members.count
            members.append(try BenchMember(name: "m\(i)", room: rooms[i % rooms.count], host: host, port: port,
                                           loop: loops[i % loops.count], heartbeat: heartbeat) { sink.yield($0) })
        }
        var finished = 0
        do {
            while members.count < min(count, inFlight) { try startNext() }
            for await failure in outcomes {
                if let failure { throw BenchSetupError(description: failure) }
                finished += 1
                if finished % 1000 == 0 { progress(finished) }
                if finished == count { break }
                if members.count < count { try startNext() }
            }
        } catch {
            for m in members { m.close() }
            throw error
        }
        return members
    }
}

/// A bench member could not get into its room.
public struct BenchSetupError: Error, CustomStringConvertible {
    public let description: String
}
