import Logging
import Messaging
import Reactor
import ServiceLifecycle
import Storage
import Synchronization

/// The chat server: users (register, login with a PBKDF2-hashed password), rooms with ordered broadcast and
/// persisted history, private messages, friends and presence, heartbeat-based offline detection, limits and
/// slow-consumer protection, over Lars frames with protobuf bodies (`ChatMessageID`, Protos/chat.proto).
///
/// A `Service`: put it in a `ServiceGroup` after the pool and the loop group it uses, so it stops first.
///
/// ```swift
/// let pool = try ConnectionPool(url: "sqlite:chat.db", logger: logger)
/// let server = ChatServer(group: group, configuration: ChatConfiguration(), pool: pool, logger: logger)
/// let address = try await server.start()   // optional (run() starts it too): a bind error comes out here
/// let services = ServiceGroup(services: [pool, server], gracefulShutdownSignals: [.sigterm], logger: logger)
/// try await services.run()                 // until SIGTERM: stop accepting, drain, write the history
/// await group.shutdown()
/// ```
///
/// ```
/// initial --start()--> started --run()--> running --graceful shutdown--> stopping --> stopped
///    \---------------------run()----------------^
/// ```
///
/// Threads: handlers run on the connections' I/O loops; the rules live in `ChatCore` behind one lock (see
/// `ChatHub`); storage and the KDF run as child tasks of `run()`. Safe to call from any thread but the group's loops.
public final class ChatServer: Service, Sendable {
    public let configuration: ChatConfiguration
    let hub: ChatHub
    let framed: FramedServer
    let pool: ConnectionPool
    private let logger: Logger
    private let lifecycle = Mutex(State.initial)

    private enum State: Sendable {
        case initial
        case started(SocketAddress)
        case running(SocketAddress)
        case stopping
        case stopped
    }

    /// - Parameters:
    ///   - group: The loops that serve the connections.
    ///   - configuration: Address, limits, timeouts.
    ///   - pool: Where users, friendships and room history are stored (tables created by `start()`).
    ///   - logger: Where the server logs (connections cut off, storage failures; nothing per message).
    public init(group: EventLoopGroup, configuration: ChatConfiguration = ChatConfiguration(), pool: ConnectionPool,
                logger: Logger) {
        self.configuration = configuration
        self.pool = pool
        self.logger = logger
        let hub = ChatHub(configuration: configuration, store: ChatStore(pool: pool), loops: group.allLoops,
                          logger: logger)
        self.hub = hub
        let router = MessageRouter<TCPConnection>()
        // The routes are fixed here; registering a fresh router cannot fail.
        do {
            try router.on(ChatMessageID.registerRequest, hub.register)
            try router.on(ChatMessageID.loginRequest, hub.login)
            try router.on(ChatMessageID.joinRequest, hub.join)
            try router.on(ChatMessageID.leaveRequest, hub.leave)
            try router.on(ChatMessageID.listRoomsRequest, hub.listRooms)
            try router.on(ChatMessageID.sayRequest, hub.say)
            try router.on(ChatMessageID.privateMessageRequest, hub.privateMessage)
            try router.on(ChatMessageID.friendAddRequest, hub.addFriend)
            try router.on(ChatMessageID.friendListRequest, hub.listFriends)
        } catch {
            preconditionFailure("chat routes: \(error)")
        }
        let server = configuration.server
        framed = FramedServer(
            group: group,
            configuration: FramedServerConfiguration(server: server, maxBodyLength: configuration.maxFrameBodyLength,
                                                     idleTimeout: configuration.idleTimeout),
            router: router, logger: logger,
            onConnect: { hub.connected($0) },
            onClose: { hub.disconnected($0) })
    }

    /// Checks the configuration, creates the tables when missing, binds and starts accepting. Returns the bound
    /// address; called again, returns it again. Requests that need storage wait for `run()`.
    @discardableResult
    public func start() async throws -> SocketAddress {
        switch lifecycle.withLock({ $0 }) {
        case .started(let address), .running(let address): return address
        case .stopping, .stopped: throw ChatServerError.stopped
        case .initial: break
        }
        try configuration.validate()
        try await hub.store.createSchema()
        return try lifecycle.withLock { state in
            switch state {
            case .started(let address), .running(let address): return address
            case .stopping, .stopped: throw ChatServerError.stopped
            case .initial:
                let address = try framed.start()
                state = .started(address)
                return address
            }
        }
    }

    /// Serves until the graceful shutdown of its `ServiceGroup` (or cancellation): starts when not started, runs the
    /// storage and KDF jobs as child tasks, then stops accepting, closes the connections (each flushes first, up
    /// to `configuration.drainTimeout`), waits for the jobs in flight and writes the history still queued.
    public func run() async throws {
        _ = try await start()
        try lifecycle.withLock { state in
            guard case .started(let address) = state else { throw ChatServerError.alreadyRunning }
            state = .running(address)
        }
        let jobs = hub.jobs
        let writer = hub.writer
        await withDiscardingTaskGroup { outer in
            // The history writer outlives the connections and the jobs: it ends with what they left queued.
            outer.addTask { await writer.run() }
            await withDiscardingTaskGroup { group in
                group.addTask { [self] in
                    try? await gracefulShutdown()
                    lifecycle.withLock { $0 = .stopping }
                    let (framed, timeout) = (framed, configuration.drainTimeout)
                    await runOnDedicatedThread(name: "sy-chat-stop") { framed.shutdown(timeout: timeout) }
                    jobs.finish()
                }
                for await job in jobs.stream {
                    group.addTask { await job() }
                }
            }
            await writer.flush()
            writer.finish()
        }
        lifecycle.withLock { $0 = .stopped }
        logger.info("chat server stopped")
    }

    /// The bound address once started.
    public var localAddress: SocketAddress? { framed.localAddress }
    /// Open connections.
    public var connectionCount: Int { framed.connectionCount }
    /// The server's counters.
    public var statistics: ChatStatistics { hub.statistics }
    /// Frame-level counters (protocol errors, heartbeats).
    public var frameStatistics: FrameStatistics { framed.statistics }

    /// Logged-in users, sorted. Safe from any thread.
    public var onlineUsers: [String] { hub.state.withLock { $0.onlineUsers } }

    /// Rooms held in memory (those with members, or with a history load under way). Safe from any thread.
    public var roomCount: Int { hub.state.withLock { $0.rooms.count } }

    /// Members of a room right now (0 when unknown). Safe from any thread.
    public func memberCount(of room: String) -> Int { hub.state.withLock { $0.memberCount(of: room) } }

    /// Waits until the room history appended so far is in the database.
    public func flushHistory() async { await hub.writer.flush() }
}

/// Errors of `ChatServer`'s lifecycle.
public enum ChatServerError: Error, Sendable, Equatable, CustomStringConvertible {
    /// `start()` or `run()` after the server stopped (a server runs once).
    case stopped
    /// `run()` while another `run()` serves.
    case alreadyRunning

    public var description: String {
        switch self {
        case .stopped: return "the chat server has stopped; make a new one"
        case .alreadyRunning: return "the chat server is running already"
        }
    }
}
