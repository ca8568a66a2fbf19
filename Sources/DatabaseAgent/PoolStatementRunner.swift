import Storage
import Synchronization

/// The runner over today's ``ConnectionPool``: `pool.query` returns the whole result, which the source then cuts
/// into batches. The timeout is enforced on the caller's side only: the agent answers `timeout` when it passes, but
/// the statement goes on in the database and holds its pooled connection until it ends. (To be replaced by Storage's
/// streaming cursor with server-side cancellation: only this file changes.)
struct PoolStatementRunner: StatementRunner {
    let pool: ConnectionPool

    func run(_ sql: String, _ parameters: [SQLValue], timeout: Duration) async throws -> any RowSource {
        let pool = pool
        let result = try await Self.withTimeout(timeout) { try await pool.query(sql, parameters) }
        return WholeResultSource(result)
    }

    func runBatch(_ statements: [(sql: String, parameters: [SQLValue])], timeout: Duration) async throws
        -> BatchOutcome
    {
        let pool = pool
        let all = statements.map { Statement(sql: $0.sql, parameters: $0.parameters) }
        return try await Self.withTimeout(timeout) {
            try await pool.transaction { connection in
                var outcome = BatchOutcome(affectedRows: 0, lastInsertID: nil)
                for statement in all {
                    try Task.checkCancellation()
                    let result = try await connection.query(statement.sql, statement.parameters)
                    outcome.affectedRows += result.affectedRows
                    outcome.lastInsertID = result.lastInsertID
                }
                return outcome
            }
        }
    }

    private struct Statement: Sendable {
        let sql: String
        let parameters: [SQLValue]
    }

    /// Runs `work` and gives up after `timeout` or when cancelled: the work's task is cancelled then (a batch stops
    /// before its next statement and rolls back; a statement already in the driver runs to its end, its result
    /// dropped).
    static func withTimeout<T: Sendable>(_ timeout: Duration, _ work: @escaping @Sendable () async throws -> T)
        async throws -> T
    {
        let race = Race<T>()
        return try await withTaskCancellationHandler {
            try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<T, Error>) in
                race.begin(continuation)
                let worker = Task {
                    do { race.finish(.success(try await work())) } catch { race.finish(.failure(error)) }
                }
                let timer = Task {
                    try? await Task.sleep(for: timeout)
                    if !Task.isCancelled { race.finish(.failure(RunnerError.timeout(timeout))) }
                }
                race.setTasks(worker, timer)
            }
        } onCancel: {
            race.finish(.failure(RunnerError.cancelled))
        }
    }

    /// Whichever of the work, the timer and the cancellation comes first resumes the caller.
    private final class Race<T: Sendable>: Sendable {
        private struct State {
            var continuation: CheckedContinuation<T, Error>?
            var early: Result<T, Error>?
            var timer: Task<Void, Never>?
            var worker: Task<Void, Never>?
            var done = false
        }
        private let state = Mutex(State())

        func begin(_ continuation: CheckedContinuation<T, Error>) {
            let early = state.withLock { s -> Result<T, Error>? in
                if let early = s.early { return early }
                s.continuation = continuation
                return nil
            }
            if let early { continuation.resume(with: early) }
        }

        func setTasks(_ worker: Task<Void, Never>, _ timer: Task<Void, Never>) {
            let done = state.withLock { s -> Bool in
                s.timer = timer
                s.worker = worker
                return s.done
            }
            if done {
                timer.cancel()
                worker.cancel()
            }
        }

        func finish(_ result: Result<T, Error>) {
            let (continuation, timer, worker) = state.withLock {
                s -> (CheckedContinuation<T, Error>?, Task<Void, Never>?, Task<Void, Never>?) in
                guard !s.done else { return (nil, nil, nil) }
                s.done = true
                if s.continuation == nil { s.early = result }
                defer { s.continuation = nil }
                return (s.continuation, s.timer, s.worker)
            }
            timer?.cancel()
            // The work lost the race (timeout or cancellation): tell it. (It finished: cancelling is a no-op.)
            worker?.cancel()
            continuation?.resume(with: result)
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
