import Logging
import Reactor

/// Settings of a `ChatServer`. Every limit answers a client that passes it with an error reply; the server goes on.
public struct ChatConfiguration: Sendable {
    /// Address, port, connection limit, water marks.
    public var server: ServerConfiguration
    /// A connection that sends nothing (heartbeats included) for this long is closed and its user announced
    /// offline. Nil: never.
    public var idleTimeout: Duration?
    /// Largest frame body accepted; a longer frame is a protocol error and closes the connection.
    public var maxFrameBodyLength: Int
    /// Largest room or private message text, in UTF-8 bytes.
    public var maxMessageBytes: Int
    /// Longest room name, in characters.
    public var maxRoomNameLength: Int
    /// Rooms one session may be in at once.
    public var maxRoomsPerUser: Int
    /// Room and private messages one session may send per second (a token bucket of this size, refilled
    /// continuously).
    public var messagesPerSecond: Int
    /// Messages of a room sent to a member when it joins (the last N; also the in-memory history per room).
    public var historyLength: Int
    /// A connection whose queued output passes this many bytes after a send is sent a notice and closed; the
    /// other members of the room keep receiving.
    public var maxQueuedOutputBytes: Int
    /// How long a cut-off slow consumer gets to take its notice before its connection is closed hard.
    public var slowConsumerGrace: Duration
    /// PBKDF2-SHA256 iterations for new password hashes (at least 100,000; stored per user).
    public var passwordIterations: Int
    /// Failed logins for one name within `loginFailureWindow` before further attempts are refused.
    public var maxLoginFailures: Int
    /// The window of `maxLoginFailures`, and how long a name stays locked once it passes the limit.
    public var loginFailureWindow: Duration
    public var logger: Logger

    public init(
        server: ServerConfiguration = ServerConfiguration(),
        idleTimeout: Duration? = .seconds(30),
        maxFrameBodyLength: Int = 64 * 1024,
        maxMessageBytes: Int = 4096,
        maxRoomNameLength: Int = 64,
        maxRoomsPerUser: Int = 16,
        messagesPerSecond: Int = 20,
        historyLength: Int = 50,
        maxQueuedOutputBytes: Int = 1024 * 1024,
        slowConsumerGrace: Duration = .seconds(2),
        passwordIterations: Int = 210_000,
        maxLoginFailures: Int = 5,
        loginFailureWindow: Duration = .seconds(60),
        logger: Logger = Logger(label: "switchyard.chat", factory: { _ in SwiftLogNoOpLogHandler() })
    ) {
        self.server = server
        self.idleTimeout = idleTimeout
        self.maxFrameBodyLength = maxFrameBodyLength
        self.maxMessageBytes = maxMessageBytes
        self.maxRoomNameLength = maxRoomNameLength
        self.maxRoomsPerUser = maxRoomsPerUser
        self.messagesPerSecond = max(1, messagesPerSecond)
        self.historyLength = max(0, historyLength)
        self.maxQueuedOutputBytes = max(1, maxQueuedOutputBytes)
        self.slowConsumerGrace = slowConsumerGrace
        self.passwordIterations = max(PasswordHasher.minimumIterations, passwordIterations)
        self.maxLoginFailures = max(1, maxLoginFailures)
        self.loginFailureWindow = loginFailureWindow
        self.logger = logger
    }
}
