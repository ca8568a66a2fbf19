import Storage
import Synchronization

/// The runner over a ``ConnectionPool``. A statement that returns rows (it starts with SELECT, VALUES, SHOW, PRAGMA,
/// EXPLAIN, DESCRIBE or TABLE, or WITH without a change after it) runs as a Storage row stream: its rows are read
/// from the database a batch at a time, only as the agent asks for them (the agent asks once its caller has granted
/// a chunk), so a million-row answer never sits in memory, and the stream holds its pooled connection until it ends
/// or is cancelled. Any other statement runs as one query (its affected rows and insert id, and the rows of a
/// RETURNING, at once).
///
/// The timeout is the database's statement timeout: it covers the statement from its start to its last row, and when
/// it passes Storage cancels the statement on the server (`sqlite3_interrupt`, `PQcancel`, `KILL QUERY`); the
/// connection goes back to the pool healthy. A batch has one deadline for all its statements.
struct PoolStatementRunner: StatementRunner {
    let pool: ConnectionPool

    /// Rows the stream reads from the driver at a time (the agent's batches are cut from them).
    static let streamBatchRows = 500

    func run(_ sql: String, _ parameters: [SQLValue], timeout: Duration) async throws -> any RowSource {
        try Task.checkCancellation()
        do {
            if Self.returnsRows(sql) {
                let stream = try await pool.stream(sql, parameters, batchRows: Self.streamBatchRows, timeout: timeout)
                return StreamSource(stream, timeout: timeout)
            }
            return WholeResultSource(try await pool.query(sql, parameters, timeout: timeout))
        } catch let error as StorageError where error.isStatementTimeout {
            throw RunnerError.timeout(timeout)
        }
    }

    func runBatch(_ statements: [(sql: String, parameters: [SQLValue])], timeout: Duration) async throws
        -> BatchOutcome
    {
        let clock = ContinuousClock()
        let deadline = clock.now + timeout
        do {
            return try await pool.transaction { connection in
                var outcome = BatchOutcome(affectedRows: 0, lastInsertID: nil)
                for statement in statements {
                    try Task.checkCancellation()
                    let left = deadline - clock.now
                    guard left > .zero else { throw RunnerError.timeout(timeout) }
                    let result = try await connection.query(statement.sql, statement.parameters, timeout: left)
                    outcome.affectedRows += result.affectedRows
                    outcome.lastInsertID = result.lastInsertID
                }
                return outcome
            }
        } catch let error as StorageError where error.isStatementTimeout {
            throw RunnerError.timeout(timeout)
        }
    }

    /// Whether the statement's first keyword is one that returns rows (comments and parentheses before it skipped).
    static func returnsRows(_ sql: String) -> Bool {
        var rest = Substring(sql)
        while true {
            rest = rest.drop { $0.isWhitespace || $0 == "(" }
            if rest.hasPrefix("--") {
                rest = rest.drop { $0 != "\n" }
            } else if rest.hasPrefix("/*"), let end = rest.range(of: "*/") {
                rest = rest[end.upperBound...]
            } else {
                break
            }
        }
        let word = rest.prefix { $0.isLetter }.uppercased()
        if word == "WITH" {
            // A common table expression before a change (WITH ... INSERT) runs as a query, for its affected rows.
            let words = Set(rest.uppercased().split { !$0.isLetter }.map(String.init))
            return words.isDisjoint(with: ["INSERT", "UPDATE", "DELETE", "REPLACE", "MERGE"])
        }
        return ["SELECT", "VALUES", "SHOW", "PRAGMA", "EXPLAIN", "DESCRIBE", "DESC", "TABLE"].contains(word)
    }
}

/// The rows of a Storage row stream, cut into the agent's batches (a stream batch larger than the agent asks for is
/// kept for the next call).
final class StreamSource: RowSource {
    let columns: [ColumnInfo]
    private let stream: SQLRowStream
    private let timeout: Duration
    /// Rows read from the stream and not handed out yet (one task at a time calls `nextBatch`).
    private let leftover = Mutex<[[SQLValue]]>([])

    init(_ stream: SQLRowStream, timeout: Duration) {
        self.stream = stream
        self.timeout = timeout
        let names = stream.columns.names
        let types = stream.columns.types
        columns = names.indices.map { index in
            ColumnInfo(name: names[index], type: ColumnType(index < types.count ? types[index] : .unknown))
        }
    }

    func nextBatch(maxRows: Int) async throws -> RowBatch {
        let limit = max(1, maxRows)
        var rows = leftover.withLock { rows in
            defer { rows = [] }
            return rows
        }
        while rows.count < limit {
            let next: [SQLRow]?
            do {
                next = try await stream.next()
            } catch let error as StorageError where error.isStatementTimeout {
                throw RunnerError.timeout(timeout)
            }
            guard let next else { break }
            rows += next.lazy.map(\.values)
            if stream.isFinished { break }
        }
        if rows.count > limit {
            let rest = Array(rows[limit...])
            rows.removeLast(rows.count - limit)
            leftover.withLock { $0 = rest }
            return RowBatch(rows: rows, isLast: false)
        }
        return RowBatch(rows: rows, isLast: stream.isFinished)
    }

    func cancel() {
        leftover.withLock { $0 = [] }
        let stream = self.stream
        Task { await stream.cancel() }
    }

    /// A source dropped without a cancel (the agent always cancels or reads to the end) still frees its connection.
    deinit {
        if !stream.isFinished {
            let stream = self.stream
            Task { await stream.cancel() }
        }
    }
}

/// A whole result cut into batches: a statement that returns no rows, or the rows of a RETURNING. The column types
/// are Storage's, else those its rows agree on.
final class WholeResultSource: RowSource {
    let columns: [ColumnInfo]
    private let state: Mutex<(rows: [SQLRow], next: Int)>
    private let affectedRows: Int64
    private let lastInsertID: Int64?

    init(_ result: SQLResult) {
        let rows = result.rows
        let types = result.columns.types
        columns = result.columns.names.enumerated().map { index, name in
            let known = index < types.count ? ColumnType(types[index]) : .unknown
            return ColumnInfo(name: name, type: known != .unknown ? known
                              : ColumnType.of(rows.lazy.map { $0.values[index] }))
        }
        state = Mutex((rows, 0))
        affectedRows = result.affectedRows
        lastInsertID = result.lastInsertID
    }

    func nextBatch(maxRows: Int) async throws -> RowBatch {
        let (rows, isLast) = state.withLock { s -> ([[SQLValue]], Bool) in
            let end = min(s.rows.count, s.next + max(1, maxRows))
            let batch = s.rows[s.next..<end].map(\.values)
            s.next = end
            return (batch, end == s.rows.count)
        }
        return RowBatch(rows: rows, isLast: isLast, affectedRows: affectedRows, lastInsertID: lastInsertID)
    }

    func cancel() {
        state.withLock { s in
            s.rows = []
            s.next = 0
        }
    }
}
