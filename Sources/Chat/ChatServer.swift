import Logging
import Messaging
import Reactor
import Storage

/// The chat server: users (register, login with a PBKDF2-hashed password), rooms with ordered broadcast and
/// persisted history, private messages, friends and presence, heartbeat-based offline detection, limits and
/// slow-consumer protection, over Lars frames with protobuf bodies (`ChatMessageID`, Protos/chat.proto).
///
/// ```swift
/// let pool = try ConnectionPool(url: "sqlite:chat.db", logger: logger)
/// let server = ChatServer(group: group, configuration: ChatConfiguration(), pool: pool, logger: logger)
/// let address = try await server.start()
/// ...
/// await server.shutdown()
/// ```
///
/// Threads: handlers run on the connections' I/O loops; all room and user state is behind one Mutex (see
/// `ChatHub`); storage and the KDF run in tasks. Safe to call from any thread but the group's loops.
public final class ChatServer: Sendable {
    public let configuration: ChatConfiguration
    let hub: ChatHub
    let framed: FramedServer
    let pool: ConnectionPool

    /// - Parameters:
    ///   - group: The loops that serve the connections.
    ///   - configuration: Address, limits, timeouts.
    ///   - pool: Where users, friendships and room history are stored (tables created by `start()`).
    ///   - logger: Where the server logs (connections cut off, storage failures; nothing per message).
    public init(group: EventLoopGroup, configuration: ChatConfiguration = ChatConfiguration(), pool: ConnectionPool,
                logger: Logger) {
        var configuration = configuration
        configuration.logger = logger
        configuration.server.logger = logger
        self.configuration = configuration
        self.pool = pool
        let hub = ChatHub(configuration: configuration, store: ChatStore(pool: pool))
        self.hub = hub
        let router = MessageRouter<TCPConnection>()
        // The routes are fixed here; registering a fresh router cannot fail.
        do {
            try router.on(ChatMessageID.registerRequest, as: Switchyard_Chat_RegisterRequest.self) { r, m in
                hub.register(r, from: m.connection)
            }
            try router.on(ChatMessageID.loginRequest, as: Switchyard_Chat_LoginRequest.self) { r, m in
                hub.login(r, from: m.connection)
            }
            try router.on(ChatMessageID.joinRequest, as: Switchyard_Chat_JoinRequest.self) { r, m in
                hub.join(r, from: m.connection)
            }
            try router.on(ChatMessageID.leaveRequest, as: Switchyard_Chat_LeaveRequest.self) { r, m in
                hub.leave(r, from: m.connection)
            }
            try router.on(ChatMessageID.listRoomsRequest, as: Switchyard_Chat_ListRoomsRequest.self) { r, m in
                hub.listRooms(r, from: m.connection)
            }
            try router.on(ChatMessageID.sayRequest, as: Switchyard_Chat_SayRequest.self) { r, m in
                hub.say(r, from: m.connection)
            }
            try router.on(ChatMessageID.privateMessageRequest, as: Switchyard_Chat_PrivateMessageRequest.self) { r, m in
                hub.privateMessage(r, from: m.connection)
            }
            try router.on(ChatMessageID.friendAddRequest, as: Switchyard_Chat_FriendAddRequest.self) { r, m in
                hub.addFriend(r, from: m.connection)
            }
            try router.on(ChatMessageID.friendListRequest, as: Switchyard_Chat_FriendListRequest.self) { r, m in
                hub.listFriends(r, from: m.connection)
            }
        } catch {
            preconditionFailure("chat routes: \(error)")
        }
        framed = FramedServer(
            group: group,
            configuration: FramedServerConfiguration(server: configuration.server,
                                                     maxBodyLength: configuration.maxFrameBodyLength,
                                                     idleTimeout: configuration.idleTimeout),
            router: router,
            onConnect: { hub.connected($0) },
            onClose: { hub.disconnected($0) })
    }

    /// Creates the tables when missing, binds and starts accepting. Returns the bound address.
    @discardableResult
    public func start() async throws -> SocketAddress {
        try await hub.store.createSchema()
        return try framed.start()
    }

    /// Stops accepting, closes every connection (bounded wait) and writes the history still queued.
    /// Blocks a thread while the connections close; call from a task or thread that is not one of the loops.
    public func shutdown(timeout: Duration = .seconds(5)) async {
        framed.shutdown(timeout: timeout)
        await hub.writer.flush()
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
    public var onlineUsers: [String] { hub.state.withLock { $0.online.keys.sorted() } }

    /// Members of a room right now (0 when unknown). Safe from any thread.
    public func memberCount(of room: String) -> Int { hub.state.withLock { $0.rooms[room]?.memberCount ?? 0 } }

    /// Waits until the room history appended so far is in the database.
    public func flushHistory() async { await hub.writer.flush() }
}
