import ArgumentParser
import Chat
import Foundation
import Logging
import Messaging
import Reactor
import Storage
import Synchronization

struct ChatBenchCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "chat",
        abstract: "Chat fan-out: one sender, a room of N members; delivered messages/s and p99 delivery latency."
    )

    @Option(help: "Room members (the sender included).") var members = 100
    @Option(help: "Messages the sender sends.") var messages = 1000
    @Option(help: "Payload bytes per message.") var size = 64
    @Option(help: "Messages in flight from the sender.") var window = 32
    @Option(help: "Server I/O threads.") var threads = 1
    @Option(help: "Database URL (default: a temporary SQLite file).") var db: String?
    @Option(help: "Port of a running chat server to measure instead of an in-process one.") var port: Int?

    func validate() throws {
        guard members >= 2 && members <= 20_000 else { throw ValidationError("--members must be 2...20000") }
        guard messages >= 1 else { throw ValidationError("--messages must be positive") }
        guard size >= 24 && size <= 4000 else { throw ValidationError("--size must be 24...4000") }
        guard window >= 1 && window <= 1024 else { throw ValidationError("--window must be 1...1024") }
    }

    func run() async throws {
        let logger = Logger(label: "switchyard.bench.chat", factory: { _ in SwiftLogNoOpLogHandler() })
        let clientGroup = try EventLoopGroup(ioLoops: 1)
        defer { clientGroup.shutdown() }
        var stopServer: (@Sendable () async -> Void)? = nil
        let port: Int
        if let external = self.port {
            port = external
        } else {
            let path = FileManager.default.temporaryDirectory
                .appendingPathComponent("chat-bench-\(UUID().uuidString).sqlite").path
            let url = db ?? "sqlite:" + path
            let pool = try ConnectionPool(url: url, logger: logger)
            let serverGroup = try EventLoopGroup(ioLoops: threads)
            let server = ChatServer(
                group: serverGroup,
                configuration: ChatConfiguration(idleTimeout: nil, maxMessageBytes: 4096, messagesPerSecond: 1_000_000,
                                                 maxQueuedOutputBytes: 64 << 20,
                                                 passwordIterations: PasswordHasher.minimumIterations),
                pool: pool, logger: logger)
            port = Int(try await server.start().port)
            stopServer = {
                await server.shutdown(timeout: .seconds(2))
                serverGroup.shutdown()
                await pool.close()
                if self.db == nil { try? FileManager.default.removeItem(atPath: path) }
            }
        }
        announce("chat fan-out: \(members) members, \(messages) messages of \(size) bytes, window \(window)")

        // Receivers: register, log in (the password KDF makes this the slow part), join. The sender is a ChatClient.
        let receivers = try await BenchMember.connect(
            count: members - 1, port: port, loops: clientGroup.ioLoops, rooms: ["bench"], heartbeat: nil)
        let sender = try await ChatClient.connect(port: port, loop: clientGroup.next(), heartbeatInterval: nil,
                                                  requestTimeout: .seconds(60))
        do {
            try await sender.register(name: "sender", password: "bench")
        } catch ChatClientError.refused(.nameTaken, _) {}
        _ = try await sender.login(name: "sender", password: "bench")
        _ = try await sender.join("bench")
        announce("members joined; sending")

        let padding = String(repeating: "x", count: size - 21)
        let start = SystemInfo.monotonicNanoseconds()
        try await withThrowingTaskGroup(of: Void.self) { group in
            let perTask = (messages + window - 1) / window
            for w in 0..<window {
                let count = min(perTask, messages - w * perTask)
                if count <= 0 { break }
                group.addTask {
                    for _ in 0..<count {
                        let now = SystemInfo.monotonicNanoseconds()
                        try await sender.say("\(now) \(padding)", in: "bench")
                    }
                }
            }
            try await group.waitForAll()
        }
        // Every receiver gets every message (or the run gives up after 60 s and reports what arrived).
        let expected = messages * receivers.count
        let deadline = SystemInfo.monotonicNanoseconds() + 60_000_000_000
        var delivered = 0
        while true {
            delivered = receivers.reduce(0) { $0 + $1.receivedCount }
            if delivered >= expected || SystemInfo.monotonicNanoseconds() > deadline { break }
            try await Task.sleep(for: .milliseconds(2))
        }
        let elapsed = Double(SystemInfo.monotonicNanoseconds() - start) / 1e9
        var all = receivers.flatMap(\.received)
        all.sort()
        func pct(_ p: Double) -> Double {
            all.isEmpty ? 0 : Double(all[min(all.count - 1, Int(Double(all.count) * p))]) / 1e6
        }
        announce("delivered \(delivered) of \(expected) messages in \(format2(elapsed)) s = "
                 + "\(Int(Double(delivered) / elapsed)) msgs/s; latency p50 \(format2(pct(0.5))) ms, "
                 + "p99 \(format2(pct(0.99))) ms, max \(format2(pct(1.0))) ms")
        for r in receivers { r.close() }
        await sender.close()
        await stopServer?()
    }
}

/// A chat user for the benchmarks, lighter than `ChatClient` so that a thousand of them in the measuring process
/// leave the cores to the server: a `FramedClient` whose handlers run on its loop and walk register -> login ->
/// join, then count the room messages it receives and their delivery latency (the text starts with the sender's
/// monotonic send time in nanoseconds).
final class BenchMember: Sendable {
    let name: String
    let room: String
    private let client: FramedClient
    private final class Tally: Sendable {
        let latencies = Mutex<[UInt64]>([])
        let ready = Atomic<Bool>(false)
    }
    private let tally = Tally()

    /// Starts connecting at once; `onReady` runs (on the member's loop) once the member is in its room, or with a
    /// reason when a step failed.
    init(name: String, room: String, host: String, port: Int, loop: EventLoop, heartbeat: Duration?,
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
            guard let m = try? Switchyard_Chat_RoomMessage(serializedBytes: message.body) else { return }
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
    var received: [UInt64] { tally.latencies.withLock { $0 } }
    var receivedCount: Int { tally.latencies.withLock { $0.count } }

    func close() { client.disconnect() }

    /// Connects `count` members named `m0`, `m1`, ...; member i joins `rooms[i % rooms.count]`; at most
    /// `inFlight` in setup at once (the server's password KDF is the slow part). Returns them in order once all
    /// are in, or throws the first failure.
    static func connect(count: Int, host: String = "127.0.0.1", port: Int, loops: [EventLoop], rooms: [String],
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

struct BenchSetupError: Error, CustomStringConvertible {
    let description: String
}
struct ChatIdleBenchCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "chat-idle",
        abstract: "Connects N chat users to a running server (`switchyard chat`), logs them in, and keeps them idle.",
        discussion: """
            For measuring the server's memory per connected user: each user registers (or finds its name taken \
            in a reused database), logs in, joins one of --rooms rooms, then only sends heartbeats. Prints \
            "ready N users" once all are in, then holds them until stdin ends or the process is stopped.
            """
    )

    @Option(help: "Server address.") var host = "127.0.0.1"
    @Option(help: "Server port.") var port: Int
    @Option(help: "Users to connect.") var users = 10_000
    @Option(help: "Rooms the users are spread over.") var rooms = 100
    @Option(help: "Seconds between each user's heartbeats.") var heartbeat = 10
    @Option(help: "Client I/O threads.") var threads = 1

    func validate() throws {
        guard (1...65535).contains(port) else { throw ValidationError("--port must be 1...65535, got \(port)") }
        guard (1...100_000).contains(users) else { throw ValidationError("--users must be 1...100000") }
        guard rooms >= 1 else { throw ValidationError("--rooms must be positive") }
        guard heartbeat >= 1 else { throw ValidationError("--heartbeat must be positive") }
        guard (1...64).contains(threads) else { throw ValidationError("--threads must be 1...64") }
    }

    func run() async throws {
        let group = try EventLoopGroup(ioLoops: threads)
        defer { group.shutdown() }
        let start = ContinuousClock.now
        let clients = try await BenchMember.connect(
            count: users, host: host, port: port, loops: group.ioLoops, rooms: (0..<rooms).map { "room\($0)" },
            heartbeat: .seconds(heartbeat)) { done in announce("\(done) users in") }
        let (secs, atto) = (ContinuousClock.now - start).components
        announce("ready \(clients.count) users in \(format2(Double(secs) + Double(atto) / 1e18)) s")
        // Hold them until stdin ends (or a signal ends the process).
        await withCheckedContinuation { (c: CheckedContinuation<Void, Never>) in
            Thread.detachNewThread {
                var byte: UInt8 = 0
                while read(0, &byte, 1) > 0 {}
                c.resume()
            }
        }
        for c in clients { c.close() }
    }
}
