import Reactor

/// Settings of a `ChatServer`. Every limit answers a client that passes it with an error reply; the server goes on.
/// `validate()` says whether the values make sense; `ChatServer.start()` calls it.
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
    /// Longest room name, in UTF-8 bytes (bytes, not characters: one character can be thousands of bytes of
    /// combining marks). User names are 1-32 ASCII letters, digits, '_', '-', '.'; passwords 1-1024 bytes.
    public var maxRoomNameBytes: Int
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
    /// PBKDF2-SHA256 iterations for new password hashes (at least `PasswordHasher.minimumIterations`; stored per
    /// user).
    public var passwordIterations: Int
    /// Failed logins for one name within `loginFailureWindow` before further attempts are refused.
    public var maxLoginFailures: Int
    /// The window of `maxLoginFailures`, and how long a (name, source address) pair stays locked the first time it
    /// passes the limit; each later lock of the pair lasts twice as long, up to `maxLoginLockout`.
    public var loginFailureWindow: Duration
    /// The longest lock of a (name, source address) pair.
    public var maxLoginLockout: Duration
    /// Requests that need storage or the password KDF (register, login, join of a room not in memory, friend add)
    /// one connection may have in progress; more are answered RATE_LIMITED ("busy") at once.
    public var maxRequestsInFlightPerConnection: Int
    /// The same for all the connections of one source address together, so one peer never holds the whole
    /// database pool (keep it below the pool's size).
    public var maxRequestsInFlightPerSource: Int
    /// Registrations one source address may make a minute after its burst (each costs a password hash); more are
    /// answered RATE_LIMITED. Nil: no limit.
    public var registrationsPerMinute: Int?
    /// Registrations one source address may make at once before `registrationsPerMinute` applies.
    public var registrationBurst: Int
    /// On shutdown, how long the connections get to flush before they are closed hard.
    public var drainTimeout: Duration

    public init(
        server: ServerConfiguration = ServerConfiguration(),
        idleTimeout: Duration? = .seconds(30),
        maxFrameBodyLength: Int = 64 * 1024,
        maxMessageBytes: Int = 4096,
        maxRoomNameBytes: Int = 128,
        maxRoomsPerUser: Int = 16,
        messagesPerSecond: Int = 20,
        historyLength: Int = 50,
        maxQueuedOutputBytes: Int = 1024 * 1024,
        slowConsumerGrace: Duration = .seconds(2),
        passwordIterations: Int = 210_000,
        maxLoginFailures: Int = 5,
        loginFailureWindow: Duration = .seconds(60),
        maxLoginLockout: Duration = .seconds(3600),
        maxRequestsInFlightPerConnection: Int = 2,
        maxRequestsInFlightPerSource: Int = 4,
        registrationsPerMinute: Int? = 30,
        registrationBurst: Int = 5,
        drainTimeout: Duration = .seconds(5)
    ) {
        self.server = server
        self.idleTimeout = idleTimeout
        self.maxFrameBodyLength = maxFrameBodyLength
        self.maxMessageBytes = maxMessageBytes
        self.maxRoomNameBytes = maxRoomNameBytes
        self.maxRoomsPerUser = maxRoomsPerUser
        self.messagesPerSecond = messagesPerSecond
        self.historyLength = historyLength
        self.maxQueuedOutputBytes = maxQueuedOutputBytes
        self.slowConsumerGrace = slowConsumerGrace
        self.passwordIterations = passwordIterations
        self.maxLoginFailures = maxLoginFailures
        self.loginFailureWindow = loginFailureWindow
        self.maxLoginLockout = maxLoginLockout
        self.maxRequestsInFlightPerConnection = maxRequestsInFlightPerConnection
        self.maxRequestsInFlightPerSource = maxRequestsInFlightPerSource
        self.registrationsPerMinute = registrationsPerMinute
        self.registrationBurst = registrationBurst
        self.drainTimeout = drainTimeout
    }

    /// Throws the first setting that makes no sense.
    public func validate() throws(ChatConfigurationError) {
        do { try server.validate() } catch { throw .server(error) }
        if let idleTimeout, idleTimeout <= .zero { throw .idleTimeoutNotPositive(idleTimeout) }
        if maxFrameBodyLength < 1 { throw .notPositive("maxFrameBodyLength", maxFrameBodyLength) }
        if maxMessageBytes < 1 { throw .notPositive("maxMessageBytes", maxMessageBytes) }
        if maxMessageBytes > maxFrameBodyLength {
            throw .messageLongerThanFrame(maxMessageBytes: maxMessageBytes, maxFrameBodyLength: maxFrameBodyLength)
        }
        if maxRoomNameBytes < 1 { throw .notPositive("maxRoomNameBytes", maxRoomNameBytes) }
        if maxRoomsPerUser < 1 { throw .notPositive("maxRoomsPerUser", maxRoomsPerUser) }
        if messagesPerSecond < 1 { throw .notPositive("messagesPerSecond", messagesPerSecond) }
        if historyLength < 0 { throw .negativeHistoryLength(historyLength) }
        if maxQueuedOutputBytes < 1 { throw .notPositive("maxQueuedOutputBytes", maxQueuedOutputBytes) }
        if slowConsumerGrace < .zero { throw .negativeDuration("slowConsumerGrace", slowConsumerGrace) }
        if passwordIterations < PasswordHasher.minimumIterations { throw .tooFewIterations(passwordIterations) }
        if maxLoginFailures < 1 { throw .notPositive("maxLoginFailures", maxLoginFailures) }
        if loginFailureWindow <= .zero { throw .loginWindowNotPositive(loginFailureWindow) }
        if maxLoginLockout < loginFailureWindow { throw .negativeDuration("maxLoginLockout - loginFailureWindow",
                                                                          maxLoginLockout - loginFailureWindow) }
        if maxRequestsInFlightPerConnection < 1 {
            throw .notPositive("maxRequestsInFlightPerConnection", maxRequestsInFlightPerConnection)
        }
        if maxRequestsInFlightPerSource < 1 {
            throw .notPositive("maxRequestsInFlightPerSource", maxRequestsInFlightPerSource)
        }
        if let registrationsPerMinute, registrationsPerMinute < 1 {
            throw .notPositive("registrationsPerMinute", registrationsPerMinute)
        }
        if registrationBurst < 1 { throw .notPositive("registrationBurst", registrationBurst) }
        if drainTimeout < .zero { throw .negativeDuration("drainTimeout", drainTimeout) }
    }
}

/// A `ChatConfiguration` setting that makes no sense.
public enum ChatConfigurationError: Error, Sendable, Equatable, CustomStringConvertible {
    /// A setting of `server` (address, connection limit, water marks) cannot work.
    case server(ConfigurationError)
    /// A count or size that must be at least 1 (the setting's name and value).
    case notPositive(String, Int)
    /// `historyLength` below 0.
    case negativeHistoryLength(Int)
    /// `maxMessageBytes` larger than `maxFrameBodyLength`: such a message could never arrive.
    case messageLongerThanFrame(maxMessageBytes: Int, maxFrameBodyLength: Int)
    /// `passwordIterations` below `PasswordHasher.minimumIterations`.
    case tooFewIterations(Int)
    /// `idleTimeout` of zero or less (nil turns it off).
    case idleTimeoutNotPositive(Duration)
    /// `loginFailureWindow` of zero or less.
    case loginWindowNotPositive(Duration)
    /// A duration that must not be negative (the setting's name and value).
    case negativeDuration(String, Duration)

    public var description: String {
        switch self {
        case .server(let error): return "\(error)"
        case .notPositive(let name, let value): return "\(name) must be at least 1, got \(value)"
        case .negativeHistoryLength(let value): return "historyLength must be 0 or more, got \(value)"
        case .messageLongerThanFrame(let message, let frame):
            return "maxMessageBytes (\(message)) must not exceed maxFrameBodyLength (\(frame))"
        case .tooFewIterations(let value):
            return "passwordIterations must be at least \(PasswordHasher.minimumIterations), got \(value)"
        case .idleTimeoutNotPositive(let value): return "idleTimeout must be positive (nil: off), got \(value)"
        case .loginWindowNotPositive(let value): return "loginFailureWindow must be positive, got \(value)"
        case .negativeDuration(let name, let value): return "\(name) must not be negative, got \(value)"
        }
    }
}
