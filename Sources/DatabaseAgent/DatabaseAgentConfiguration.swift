import LarsWire
import Reactor

/// Settings of a ``DatabaseAgentServer``: where it listens and every bound it keeps (README "Limits").
public struct DatabaseAgentConfiguration: Sendable {
    /// How long the agent's loops poll without sleeping after an event, as `switchyard db-agent` sets
    /// ``LoopConfiguration/busyPoll`` of its group (`--busy-poll-us`): 400 µs, longer than a point select's round trip
    /// to a database on the same network, so a statement's answer and a caller's next request find the loop awake
    /// instead of paying a thread wake-up each. An idle agent stops polling that long after its last event.
    public static let defaultBusyPoll: Duration = .microseconds(400)

    /// Address, port (default 7795) and connection limit (default 1024: more are refused at accept).
    public var server: ServerConfiguration
    /// Longest request frame body; a longer frame closes that connection (default 4 MiB). Rows chunks the agent
    /// sends stay under it too: a row that cannot is refused `TOO_LARGE`.
    public var maxFrameBodyLength: Int
    /// A connection silent for longer is closed (default 5 minutes; nil: never).
    public var idleTimeout: Duration?
    /// A statement's timeout when the request gives none (default 30 s).
    public var defaultTimeout: Duration
    /// The longest timeout a request may ask for (default 5 minutes); longer ones are cut to it.
    public var maxTimeout: Duration
    /// Rows per chunk when the request gives none (default 256).
    public var defaultBatchRows: Int
    /// The most rows per chunk a request may ask for (default 10,000); more are cut to it.
    public var maxBatchRows: Int
    /// Open requests per connection (default 16); more are refused `BUSY`.
    public var maxRequestsPerConnection: Int
    /// Open requests across the agent (default 1024); more are refused `BUSY`.
    public var maxRequestsInFlight: Int
    /// Unused chunk grants (MoreRows) the agent keeps per request (default 4); more are ignored. The agent reads the
    /// next batch only when it holds a grant, so it never holds more than one batch of a request.
    public var maxCredit: Int
    /// A request whose caller grants no chunk for this long is ended with `TIMEOUT`, freeing what it holds
    /// (default 60 s; nil: never).
    public var creditTimeout: Duration?
    /// Longest SQL text of a request, in bytes (default 64 KiB); longer is refused `TOO_LARGE`.
    public var maxSQLBytes: Int
    /// Parameters per statement at most (default 10,000); more are refused `TOO_LARGE`.
    public var maxParameters: Int
    /// Statements per batch at most (default 1,000); more are refused `TOO_LARGE`.
    public var maxBatchStatements: Int
    /// Requests with no valid token a connection may send; at this count it is closed (default 3).
    public var maxAuthFailures: Int
    /// Transactions open at once across the agent (Transaction BEGIN: each pins one pooled connection to its caller's
    /// connection until COMMIT or ROLLBACK); more are refused `BUSY` (default 4; keep it below the pool's
    /// maxConnections, so that single requests always find a connection).
    public var maxTransactions: Int
    /// The longest a transaction stays open (default 60 s; a BEGIN may ask for less): past it the agent rolls it back
    /// and gives the pooled connection back; the caller's next request in it gets `TRANSACTION`.
    public var transactionTimeout: Duration
    /// Connections without a valid token are logged once per episode: one after this long without one starts a new
    /// episode, with a new line (default 10 s).
    public var logQuietInterval: Duration

    public init(server: ServerConfiguration = ServerConfiguration(port: 7795, maxConnections: 1024),
                maxFrameBodyLength: Int = FrameParser.defaultMaxBodyLength, idleTimeout: Duration? = .seconds(300),
                defaultTimeout: Duration = .seconds(30), maxTimeout: Duration = .seconds(300),
                defaultBatchRows: Int = 256, maxBatchRows: Int = 10_000, maxRequestsPerConnection: Int = 16,
                maxRequestsInFlight: Int = 1024, maxCredit: Int = 4, creditTimeout: Duration? = .seconds(60),
                maxSQLBytes: Int = 64 << 10, maxParameters: Int = 10_000, maxBatchStatements: Int = 1000,
                maxAuthFailures: Int = 3, logQuietInterval: Duration = .seconds(10), maxTransactions: Int = 4,
                transactionTimeout: Duration = .seconds(60)) {
        self.server = server
        self.maxFrameBodyLength = maxFrameBodyLength
        self.idleTimeout = idleTimeout
        self.defaultTimeout = defaultTimeout
        self.maxTimeout = maxTimeout
        self.defaultBatchRows = defaultBatchRows
        self.maxBatchRows = maxBatchRows
        self.maxRequestsPerConnection = maxRequestsPerConnection
        self.maxRequestsInFlight = maxRequestsInFlight
        self.maxCredit = maxCredit
        self.creditTimeout = creditTimeout
        self.maxSQLBytes = maxSQLBytes
        self.maxParameters = maxParameters
        self.maxBatchStatements = maxBatchStatements
        self.maxAuthFailures = maxAuthFailures
        self.logQuietInterval = logQuietInterval
        self.maxTransactions = maxTransactions
        self.transactionTimeout = transactionTimeout
    }

    /// Throws the first setting out of range.
    public func validate() throws(DatabaseAgentConfigurationError) {
        func positive(_ value: Int, _ name: String) throws(DatabaseAgentConfigurationError) {
            guard value >= 1 else { throw .invalid("\(name) must be at least 1, got \(value)") }
        }
        func positive(_ value: Duration?, _ name: String) throws(DatabaseAgentConfigurationError) {
            if let value, value <= .zero { throw .invalid("\(name) must be positive, got \(value)") }
        }
        guard (0...65535).contains(server.port) else { throw .invalid("port must be 0...65535, got \(server.port)") }
        try positive(server.maxConnections, "maxConnections")
        guard maxFrameBodyLength >= 1024 else {
            throw .invalid("maxFrameBodyLength must be at least 1024, got \(maxFrameBodyLength)")
        }
        try positive(idleTimeout, "idleTimeout")
        try positive(defaultTimeout, "defaultTimeout")
        try positive(maxTimeout, "maxTimeout")
        guard defaultTimeout <= maxTimeout else { throw .invalid("defaultTimeout must not be above maxTimeout") }
        try positive(defaultBatchRows, "defaultBatchRows")
        try positive(maxBatchRows, "maxBatchRows")
        guard defaultBatchRows <= maxBatchRows else {
            throw .invalid("defaultBatchRows must not be above maxBatchRows")
        }
        try positive(maxRequestsPerConnection, "maxRequestsPerConnection")
        try positive(maxRequestsInFlight, "maxRequestsInFlight")
        try positive(maxCredit, "maxCredit")
        try positive(creditTimeout, "creditTimeout")
        try positive(maxSQLBytes, "maxSQLBytes")
        guard maxSQLBytes < maxFrameBodyLength else { throw .invalid("maxSQLBytes must be below maxFrameBodyLength") }
        try positive(maxParameters, "maxParameters")
        try positive(maxBatchStatements, "maxBatchStatements")
        try positive(maxAuthFailures, "maxAuthFailures")
        try positive(logQuietInterval, "logQuietInterval")
        try positive(maxTransactions, "maxTransactions")
        try positive(transactionTimeout, "transactionTimeout")
    }
}

/// A setting of ``DatabaseAgentConfiguration`` out of range.
public enum DatabaseAgentConfigurationError: Error, Equatable, Sendable, CustomStringConvertible {
    case invalid(String)

    public var description: String {
        switch self {
        case .invalid(let reason): return "database agent configuration: \(reason)"
        }
    }
}
