/// A driver's connection: blocking calls, made only on the owning connection's worker thread.
protocol DriverConnection: AnyObject {
    /// Runs one statement (SQLite: one or more) with `?` parameters bound in order. Throws ``StorageError``.
    func execute(_ sql: String, _ parameters: [SQLValue]) throws -> SQLResult
    /// Starts one statement whose rows are read on demand (see ``DriverStream``). Nothing else runs on the
    /// connection until the stream is finished or closed. Throws ``StorageError``.
    func stream(_ sql: String, _ parameters: [SQLValue]) throws -> DriverStream
    /// Called right before each statement or stream starts, with its timeout (nil: none), for a driver that passes it
    /// on (agent://: the agent then cancels in its database too). Most drivers ignore it.
    func willStart(timeout: Duration?)
    /// How much later than a statement's timeout the local timer cancels it: for a driver whose server enforces the
    /// timeout itself and answers with it (agent://), the local cancel is the fallback for a server that does not
    /// answer, not a race with it. Most drivers: zero.
    var timeoutGrace: Duration { get }
    /// Returns `true` when the server answers a trivial round trip.
    func ping() -> Bool
    /// The object that cancels this connection's running statement from another thread, or `nil` when the
    /// driver cannot. Called once, right after connecting, on the worker thread.
    func makeCanceller() -> (any DriverCanceller)?
    /// Closes the connection. Called once, last.
    func close()
}

extension DriverConnection {
    func willStart(timeout: Duration?) {}
    var timeoutGrace: Duration { .zero }
}

/// Cancels the statement running on one driver connection, from any thread (the statement timer's).
///
/// The caller (``StatementGuard``) makes sure a statement of that connection is running and keeps the next one
/// from starting until `cancel()` returns, so a cancel never reaches a later statement. The statement then
/// fails (or, for some drivers, ends early) on its own thread.
protocol DriverCanceller: Sendable {
    /// Asks the server (or the library) to stop the running statement. Blocks until the request is delivered
    /// (bounded by the connect timeout). Returns `false` when it could not be delivered.
    func cancel() -> Bool
    /// The fallback when ``cancel()`` failed (the server does not answer): shuts the connection's socket down, so
    /// that the statement fails at once and the connection is dropped as broken.
    func abort()
}

/// A statement whose rows are read from the server batch by batch, as the caller asks: the driver's state for
/// one ``SQLRowStream``. Used on the connection's worker thread only.
protocol DriverStream: AnyObject {
    /// The columns, known once the stream started.
    var columns: SQLColumns { get }
    /// Rows read from the driver so far (including a row read ahead to learn the column types).
    var rowsFetched: Int { get }
    /// Rows changed, for a statement that returns none.
    var affectedRows: Int64 { get }
    /// Reads up to `limit` rows; fewer (maybe none) only at the end, after which ``isFinished`` is `true`.
    /// Throws ``StorageError``; the stream is then finished.
    func fetch(_ limit: Int) throws -> [SQLRow]
    /// `true` once the last row was read or a fetch failed.
    var isFinished: Bool { get }
    /// Ends the statement early or late: discards what is left of it, so that the connection is ready for the
    /// next one. Called exactly once. Errors are swallowed (one that breaks the connection shows at the next use).
    func close()
}

/// A stream's `fetch`: up to `limit` rows, the row read ahead (to learn the column types) first, then rows from
/// `next` until it returns nil (the end).
func fetchRows(_ limit: Int, _ columns: SQLColumns, lookahead: inout [SQLValue]?,
               next: () throws -> [SQLValue]?) rethrows -> [SQLRow] {
    var rows: [SQLRow] = []
    rows.reserveCapacity(min(limit, 4096))
    if let first = lookahead {
        rows.append(SQLRow(columns: columns, values: first))
        lookahead = nil
    }
    while rows.count < limit, let values = try next() {
        rows.append(SQLRow(columns: columns, values: values))
    }
    return rows
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
        case .agent:
            return try AgentConnector(url: url)
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

