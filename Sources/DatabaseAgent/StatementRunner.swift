import Storage

/// The agent's one seam to the database: everything the agent runs goes through it, off the loops.
///
/// `run` executes one statement and hands back a ``RowSource``: the columns at once, then the rows in batches,
/// each read only when the agent asks for it (after the caller granted a chunk), so an implementation over a
/// streaming cursor holds one batch at a time. `runBatch` runs statements in one transaction, all or nothing.
/// Both throw ``StorageError`` for what the database refuses and ``RunnerError`` for timeouts and cancellation.
protocol StatementRunner: Sendable {
    /// Runs one statement within `timeout` (until its columns and first rows can be read).
    func run(_ sql: String, _ parameters: [SQLValue], timeout: Duration) async throws -> any RowSource

    /// Runs `statements` in one transaction within `timeout`: committed when all succeed, rolled back otherwise.
    func runBatch(_ statements: [(sql: String, parameters: [SQLValue])], timeout: Duration) async throws
        -> BatchOutcome
}

/// The rows of one running statement. `nextBatch` is called by one task at a time; `cancel` from any thread, at any
/// time (also after the last batch: then it frees what is left).
protocol RowSource: AnyObject, Sendable {
    /// The result's columns (empty for a statement that returns no rows).
    var columns: [ColumnInfo] { get }
    /// The next rows, at most `maxRows` (at least 1 unless the result is over).
    func nextBatch(maxRows: Int) async throws -> RowBatch
    /// Ends the statement early and frees its resources (a cursor: its connection).
    func cancel()
}

/// A batch of rows from a ``RowSource``.
struct RowBatch: Sendable {
    var rows: [[SQLValue]]
    /// No rows come after these (the affected rows and insert id are final).
    var isLast: Bool
    var affectedRows: Int64 = 0
    var lastInsertID: Int64?
}

/// What a transaction batch did.
struct BatchOutcome: Sendable, Equatable {
    var affectedRows: Int64
    var lastInsertID: Int64?
}

/// Why the runner gave up on a statement.
enum RunnerError: Error, Equatable {
    /// It did not finish within its timeout.
    case timeout(Duration)
    /// The request was cancelled.
    case cancelled
}
