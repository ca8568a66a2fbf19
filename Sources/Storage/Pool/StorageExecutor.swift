/// Where callback variants deliver their completions: a reactor event loop (which will conform to this), a
/// dispatch queue, or anything that runs closures.
public protocol StorageExecutor: AnyObject, Sendable {
    /// Runs `work` soon, on the executor's own thread. Must not run it inline when that would block.
    func execute(_ work: @escaping @Sendable () -> Void)
}

/// The operations shared by a ``ConnectionPool`` (each call on some pooled connection) and a single
/// ``SQLConnection``.
public protocol SQLQueryable: Sendable {
    /// The SQL dialect, for the few statements that differ between databases.
    var dialect: SQLDialect { get }

    /// Runs a statement with `?` placeholders bound to `parameters` in order and returns its rows.
    /// Throws ``StorageError``.
    func query(_ sql: String, _ parameters: [SQLValue]) async throws -> SQLResult

    /// Runs a statement and calls `completion` on `executor` with the result.
    func query(_ sql: String, _ parameters: [SQLValue], on executor: any StorageExecutor,
               completion: @escaping @Sendable (Result<SQLResult, StorageError>) -> Void)

    /// Runs a statement that is cancelled on the server when it runs longer than `timeout` (then this throws
    /// ``StorageError/timeout(_:)``; the connection stays usable). `nil`: no timeout.
    func query(_ sql: String, _ parameters: [SQLValue], timeout: Duration?) async throws -> SQLResult

    /// Runs a statement with a timeout and calls `completion` on `executor` with the result.
    func query(_ sql: String, _ parameters: [SQLValue], timeout: Duration?, on executor: any StorageExecutor,
               completion: @escaping @Sendable (Result<SQLResult, StorageError>) -> Void)

    /// Starts a statement whose rows are read batch by batch as the caller asks (see ``SQLRowStream``).
    func stream(_ sql: String, _ parameters: [SQLValue], batchRows: Int, timeout: Duration?) async throws
        -> SQLRowStream
}

extension SQLQueryable {
    /// Runs a statement without parameters.
    public func query(_ sql: String) async throws -> SQLResult {
        try await query(sql, [])
    }

    /// Runs a statement and returns the number of rows it changed.
    @discardableResult
    public func execute(_ sql: String, _ parameters: [SQLValue] = []) async throws -> Int64 {
        try await query(sql, parameters).affectedRows
    }

    /// Runs a query and returns its first row, or `nil` when it has none.
    public func queryFirst(_ sql: String, _ parameters: [SQLValue] = []) async throws -> SQLRow? {
        try await query(sql, parameters).rows.first
    }

    /// Runs an `INSERT` (written without `RETURNING`) and returns the new row's id on every database:
    /// `RETURNING idColumn` is appended on PostgreSQL, ``SQLResult/lastInsertID`` is used elsewhere.
    public func insert(_ sql: String, _ parameters: [SQLValue] = [], idColumn: String = "id") async throws -> Int64 {
        let result = try await query(sql + dialect.returningID(idColumn), parameters)
        if dialect == .postgres, let id = try result.rows.first?.decode(0, as: Int64.self) { return id }
        if let id = result.lastInsertID { return id }
        throw StorageError.other(.init("the insert returned no id"))
    }
}
