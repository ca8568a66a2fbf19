import Storage
import Synchronization

/// The runner over today's ``ConnectionPool``: `pool.query` returns the whole result, which the source then cuts
/// into batches. The timeout is enforced on the caller's side only (the agent's timer answers `TIMEOUT` and cancels
/// this task): the statement goes on in the database and holds its pooled connection until it ends; a batch stops
/// before its next statement and rolls back. (To be replaced by Storage's streaming cursor with server-side
/// cancellation: only this file changes.)
struct PoolStatementRunner: StatementRunner {
    let pool: ConnectionPool

    func run(_ sql: String, _ parameters: [SQLValue], timeout: Duration) async throws -> any RowSource {
        try Task.checkCancellation()
        return WholeResultSource(try await pool.query(sql, parameters))
    }

    func runBatch(_ statements: [(sql: String, parameters: [SQLValue])], timeout: Duration) async throws
        -> BatchOutcome
    {
        try await pool.transaction { connection in
            var outcome = BatchOutcome(affectedRows: 0, lastInsertID: nil)
            for statement in statements {
                try Task.checkCancellation()
                let result = try await connection.query(statement.sql, statement.parameters)
                outcome.affectedRows += result.affectedRows
                outcome.lastInsertID = result.lastInsertID
            }
            return outcome
        }
    }
}

/// A whole result cut into batches. The column types are those its rows agree on.
final class WholeResultSource: RowSource {
    let columns: [ColumnInfo]
    private let state: Mutex<(rows: [SQLRow], next: Int)>
    private let affectedRows: Int64
    private let lastInsertID: Int64?

    init(_ result: SQLResult) {
        let rows = result.rows
        columns = result.columns.names.enumerated().map { index, name in
            ColumnInfo(name: name, type: ColumnType.of(rows.lazy.map { $0.values[index] }))
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
