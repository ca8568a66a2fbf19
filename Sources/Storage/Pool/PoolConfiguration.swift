/// Settings of a ``ConnectionPool``.
public struct PoolConfiguration: Sendable {
    /// Connections kept open even when idle (opened in the background at start and after failures).
    public var minConnections: Int
    /// Most connections open at once, in use, idle or being opened.
    public var maxConnections: Int
    /// How long a caller waits for a connection before ``StorageError/timeout(_:)``.
    public var acquireTimeout: Duration
    /// An idle connection beyond ``minConnections`` is closed after this long unused.
    public var idleTimeout: Duration
    /// A connection idle for longer than this is pinged before it is handed out again (and replaced if the ping
    /// fails). Zero checks every reuse.
    public var healthCheckAfterIdle: Duration
    /// How long opening one connection may take.
    public var connectTimeout: Duration
    /// The wait after the first failed connect; it doubles with each further failure up to
    /// ``maxReconnectBackoff``. While it runs, calls that need a new connection fail fast.
    public var reconnectBackoff: Duration
    /// The cap of the reconnect backoff.
    public var maxReconnectBackoff: Duration
    /// How often the pool closes idle connections and refills ``minConnections``.
    public var maintenanceInterval: Duration
    /// SQLite: how long a statement waits for another connection's lock before failing.
    public var sqliteBusyTimeout: Duration

    /// Creates a configuration; every setting has a default.
    public init(minConnections: Int = 1, maxConnections: Int = 8, acquireTimeout: Duration = .seconds(5),
                idleTimeout: Duration = .seconds(60), healthCheckAfterIdle: Duration = .seconds(10),
                connectTimeout: Duration = .seconds(5), reconnectBackoff: Duration = .milliseconds(100),
                maxReconnectBackoff: Duration = .seconds(5), maintenanceInterval: Duration = .seconds(1),
                sqliteBusyTimeout: Duration = .seconds(5)) {
        self.minConnections = minConnections
        self.maxConnections = maxConnections
        self.acquireTimeout = acquireTimeout
        self.idleTimeout = idleTimeout
        self.healthCheckAfterIdle = healthCheckAfterIdle
        self.connectTimeout = connectTimeout
        self.reconnectBackoff = reconnectBackoff
        self.maxReconnectBackoff = maxReconnectBackoff
        self.maintenanceInterval = maintenanceInterval
        self.sqliteBusyTimeout = sqliteBusyTimeout
    }
}

/// A pool configuration that cannot work.
public enum PoolConfigurationError: Error, Equatable, Sendable, CustomStringConvertible {
    /// `maxConnections` is below 1.
    case noConnections(maxConnections: Int)
    /// `minConnections` is negative or above `maxConnections`.
    case minimumOutOfRange(minConnections: Int, maxConnections: Int)
    /// A duration that must be positive (`acquireTimeout`, `connectTimeout`, `maintenanceInterval`,
    /// `reconnectBackoff`) is zero or negative, or `maxReconnectBackoff` is below `reconnectBackoff`.
    case badDuration(name: String, value: Duration)

    public var description: String {
        switch self {
        case .noConnections(let max): return "pool maxConnections must be at least 1, got \(max)"
        case .minimumOutOfRange(let min, let max):
            return "pool minConnections must be 0...maxConnections (\(max)), got \(min)"
        case .badDuration(let name, let value): return "pool \(name) of \(value) is out of range"
        }
    }
}

extension PoolConfiguration {
    /// Throws the first setting that cannot work. `ConnectionPool.init` calls it.
    public func validate() throws(PoolConfigurationError) {
        if maxConnections < 1 { throw .noConnections(maxConnections: maxConnections) }
        if minConnections < 0 || minConnections > maxConnections {
            throw .minimumOutOfRange(minConnections: minConnections, maxConnections: maxConnections)
        }
        for (name, value) in [("acquireTimeout", acquireTimeout), ("connectTimeout", connectTimeout),
                              ("maintenanceInterval", maintenanceInterval), ("reconnectBackoff", reconnectBackoff)]
        where value <= .zero {
            throw .badDuration(name: name, value: value)
        }
        if maxReconnectBackoff < reconnectBackoff { throw .badDuration(name: "maxReconnectBackoff", value: maxReconnectBackoff) }
        for (name, value) in [("idleTimeout", idleTimeout), ("healthCheckAfterIdle", healthCheckAfterIdle),
                              ("sqliteBusyTimeout", sqliteBusyTimeout)] where value < .zero {
            throw .badDuration(name: name, value: value)
        }
    }
}

/// A snapshot of a pool's counters.
public struct PoolStatistics: Sendable, Hashable, CustomStringConvertible {
    /// Connections handed out (including ones being health-checked for a caller).
    public var inUse: Int
    /// Open connections waiting in the pool.
    public var idle: Int
    /// Callers waiting for a connection.
    public var waiting: Int
    /// Connections being opened.
    public var connecting: Int
    /// Connections opened successfully since the pool started.
    public var created: Int
    /// Connect attempts that failed since the pool started.
    public var failed: Int
    /// Connections closed (idle timeout, broken, failed health check, pool closed).
    public var closed: Int
    /// Callers that got ``StorageError/timeout(_:)``.
    public var timeouts: Int
    /// The most connections that were open (in use + idle + connecting) at one time.
    public var highWater: Int
    /// Connect failures since the last success (0 when healthy).
    public var consecutiveFailures: Int
    /// Statements and streams cancelled on the server because they ran past their timeout (the connections
    /// stayed in the pool).
    public var statementTimeouts: Int = 0
    /// Row streams holding a connection now.
    public var openStreams: Int = 0

    /// In use + idle + connecting.
    public var open: Int { inUse + idle + connecting }

    public var description: String {
        "inUse=\(inUse) idle=\(idle) waiting=\(waiting) connecting=\(connecting) created=\(created) "
            + "failed=\(failed) closed=\(closed) timeouts=\(timeouts) highWater=\(highWater) "
            + "statementTimeouts=\(statementTimeouts) openStreams=\(openStreams)"
    }
}
