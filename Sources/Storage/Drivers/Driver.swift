/// A driver's connection: blocking calls, made only on the owning connection's worker thread.
protocol DriverConnection: AnyObject {
    /// Runs one statement (SQLite: one or more) with `?` parameters bound in order. Throws ``StorageError``.
    func execute(_ sql: String, _ parameters: [SQLValue]) throws -> SQLResult
    /// Returns `true` when the server answers a trivial round trip.
    func ping() -> Bool
    /// Closes the connection. Called once, last.
    func close()
}

/// Opens driver connections. Safe to call from any thread; `connect` blocks and runs on a worker thread.
protocol DriverConnector: Sendable {
    /// The SQL dialect of the connections.
    var dialect: SQLDialect { get }
    /// Opens a connection. Throws ``StorageError`` (connectionFailed, authenticationFailed, badURL).
    func connect(timeout: Duration) throws -> DriverConnection
    /// Releases what the connector itself holds (the SQLite in-memory anchor). Called when the pool closes.
    func shutdown()
}

/// Options shared by the drivers.
struct DriverOptions: Sendable {
    var sqliteBusyTimeout: Duration = .seconds(5)
    var sqliteWAL = true
}

enum Drivers {
    /// The connector for a URL, or ``StorageError/badURL(_:)`` when this build lacks the driver.
    static func connector(for url: DatabaseURL, options: DriverOptions) throws -> any DriverConnector {
        switch url.driver {
        case .sqlite:
            return try SQLiteConnector(url: url, options: options)
        case .mysql:
            #if MySQL
            return MySQLConnector(url: url)
            #else
            throw StorageError.badURL(.init(
                "\(url): this build has no MySQL driver; build with --traits MySQL (needs libmariadb-dev)"))
            #endif
        case .postgres:
            #if PostgreSQL
            return PostgresConnector(url: url)
            #else
            throw StorageError.badURL(.init(
                "\(url): this build has no PostgreSQL driver; build with --traits PostgreSQL (needs libpq-dev)"))
            #endif
        }
    }
}

