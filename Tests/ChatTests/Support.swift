import Chat
import Foundation
import Logging
import Messaging
import Reactor
import ServiceLifecycle
import Storage
import SwiftProtobuf
import Testing
import TestSupport

/// Every socket suite of this target nests here so they run one at a time (the machine has few cores and the
/// password KDF is slow on purpose).
@Suite("Chat over real sockets", .serialized)
enum ChatSocketTests {}

let quietLogger: Logger = {
    var logger = Logger(label: "chat-tests")
    logger.logLevel = .warning
    return logger
}()

/// User and room names no other test run uses: `names("alice")` is `alice-` and a random suffix of this value.
struct UniqueNames: Sendable {
    let suffix = String(UInt32.random(in: 0...UInt32.max), radix: 36)
    func callAsFunction(_ base: String) -> String { "\(base)-\(suffix)" }
}

/// A chat server on 127.0.0.1:0 with a fresh SQLite file (or the database given), and a client loop group, both on
/// `poller`. The server runs as a service in a `ServiceGroup`; `stop()` shuts the group down gracefully.
final class ChatHarness: Sendable {
    let serverGroup: EventLoopGroup
    let clientGroup: EventLoopGroup
    let pool: ConnectionPool
    let server: ChatServer
    let port: Int
    let databaseURL: String
    private let services: ServiceGroup
    private let running: Task<Void, Never>

    /// Passwords are hashed with the fewest iterations the server accepts unless `configure` asks for more.
    static func start(poller: PollerKind, databaseURL: String = temporarySQLiteURL("chat"),
                      _ configure: (inout ChatConfiguration) -> Void = { _ in }) async throws -> ChatHarness {
        var configuration = ChatConfiguration(passwordIterations: PasswordHasher.minimumIterations,
                                              drainTimeout: .seconds(2))
        configure(&configuration)
        let loops = LoopConfiguration(poller: poller)
        let serverGroup = try EventLoopGroup(ioLoops: 2, configuration: loops, placement: .roundRobin)
        let clientGroup = try EventLoopGroup(ioLoops: 2, configuration: loops)
        let pool = try ConnectionPool(url: databaseURL, configuration: PoolConfiguration(minConnections: 0),
                                      logger: quietLogger)
        let server = ChatServer(group: serverGroup, configuration: configuration, pool: pool, logger: quietLogger)
        let address: SocketAddress
        do {
            address = try await server.start()
        } catch {
            await pool.close()
            await serverGroup.shutdown()
            await clientGroup.shutdown()
            throw error
        }
        let services = ServiceGroup(configuration: ServiceGroupConfiguration(
            services: [ServiceGroupConfiguration.ServiceConfiguration(service: server)], logger: quietLogger))
        let running = Task {
            do { try await services.run() } catch { Issue.record("the chat service failed: \(error)") }
        }
        return ChatHarness(serverGroup: serverGroup, clientGroup: clientGroup, pool: pool, server: server,
                           port: Int(address.port), databaseURL: databaseURL, services: services, running: running)
    }

    private init(serverGroup: EventLoopGroup, clientGroup: EventLoopGroup, pool: ConnectionPool, server: ChatServer,
                 port: Int, databaseURL: String, services: ServiceGroup, running: Task<Void, Never>) {
        self.serverGroup = serverGroup
        self.clientGroup = clientGroup
        self.pool = pool
        self.server = server
        self.port = port
        self.databaseURL = databaseURL
        self.services = services
        self.running = running
    }

    func client(heartbeat: Duration? = .seconds(1)) async throws -> ChatClient {
        try await ChatClient.connect(port: port, loop: clientGroup.next(), heartbeatInterval: heartbeat,
                                     requestTimeout: .seconds(20))
    }

    /// A connected client with a fresh account, logged in.
    func user(_ name: String, heartbeat: Duration? = .seconds(1), register: Bool = true) async throws -> ChatClient {
        let c = try await client(heartbeat: heartbeat)
        if register { try await c.register(name: name, password: "pw-\(name)") }
        try await c.login(name: name, password: "pw-\(name)")
        return c
    }

    /// Closes the clients, shuts the server down gracefully (it drains and writes its history), then the rest.
    func stop(_ clients: [ChatClient] = []) async {
        for c in clients { await c.close() }
        await services.triggerGracefulShutdown()
        await running.value
        await pool.close()
        await serverGroup.shutdown()
        await clientGroup.shutdown()
    }
}

/// Waits for the first event of `client` that matches; other events are skipped.
@discardableResult
func nextEvent(_ client: ChatClient, timeout: Double = 10, _ what: String = "event",
               where match: @escaping @Sendable (ChatEvent) -> Bool = { _ in true }) async throws -> ChatEvent {
    try await withTimeout(timeout, what) {
        for await event in client.events where match(event) { return event }
        throw TestFailure("event stream ended while waiting for \(what)")
    }
}

/// Collects `count` room messages of `room` from `client`.
func roomMessages(_ client: ChatClient, room: String, count: Int, timeout: Double = 20) async throws
    -> [Switchyard_Chat_RoomMessage]
{
    try await withTimeout(timeout, "\(count) messages of \(room)") {
        var got: [Switchyard_Chat_RoomMessage] = []
        if count == 0 { return got }
        for await event in client.events {
            if case .roomMessage(let m) = event, m.room == room {
                got.append(m)
                if got.count == count { return got }
            }
        }
        throw TestFailure("event stream ended after \(got.count) of \(count) messages")
    }
}

/// Expects `body` to throw a refusal with `code`.
@discardableResult
func expectRefused(_ code: Switchyard_Chat_StatusCode, _ body: () async throws -> Void,
                   sourceLocation: SourceLocation = #_sourceLocation) async -> ChatClientError? {
    do {
        try await body()
        Issue.record("expected \(code), got success", sourceLocation: sourceLocation)
        return nil
    } catch let error as ChatClientError {
        #expect(error.code == code, "expected \(code), got \(error)", sourceLocation: sourceLocation)
        return error
    } catch {
        Issue.record("expected \(code), got \(error)", sourceLocation: sourceLocation)
        return nil
    }
}

/// A raw framed client for the cases `ChatClient` is too polite for (not reading, garbage).
struct RawChat {
    let frames: AsyncFrameClient

    static func connect(port: Int, loop: EventLoop, bufferCapacity: Int = 256) async throws -> RawChat {
        RawChat(frames: try await AsyncFrameClient.connect(port: port, loop: loop, bufferCapacity: bufferCapacity))
    }

    /// Sends `message` and returns the first frame with `replyID` (skipping others).
    func call<M: SwiftProtobuf.Message>(_ message: M, id: ChatMessageID, replyID: ChatMessageID) async throws -> InboundFrame {
        try await frames.send(message, id: id)
        let frames = self.frames
        return try await withTimeout(20, "reply \(replyID)") {
            for try await f in frames.frames where f.messageID == replyID.rawValue { return f }
            throw TestFailure("closed before reply \(replyID)")
        }
    }

    func registerAndLogin(_ name: String) async throws {
        var r = Switchyard_Chat_RegisterRequest()
        r.name = name
        r.password = "pw-\(name)"
        let reg = try await call(r, id: ChatMessageID.registerRequest, replyID: ChatMessageID.registerReply)
        #expect(try reg.decode(as: Switchyard_Chat_RegisterReply.self).status.code == .ok)
        var l = Switchyard_Chat_LoginRequest()
        l.name = name
        l.password = "pw-\(name)"
        let login = try await call(l, id: ChatMessageID.loginRequest, replyID: ChatMessageID.loginReply)
        #expect(try login.decode(as: Switchyard_Chat_LoginReply.self).status.code == .ok)
    }
}
