import Reactor
import Storage

/// The agent's one seam to the database: everything the agent runs goes through it, off the loops.
///
/// `run` executes one statement and hands back a ``RowSource``: the columns at once, then the rows in batches,
/// each read only when the agent asks for it (after the caller granted a chunk), so an implementation over a
/// streaming cursor holds one batch at a time. `runBatch` runs statements in one transaction, all or nothing.
/// Both throw ``StorageError`` for what the database refuses and ``RunnerError`` for timeouts and cancellation.
///
/// The agent calls the callback form, ``start(_:_:timeout:firstBatch:loop:completion:)``: the pool's runner implements
/// it with the statement driven by the caller's loop (PostgreSQL) or callbacks on the connection's worker thread (no
/// task, no continuation per request); the default goes through `run` in a task.
protocol StatementRunner: Sendable {
    /// Runs one statement within `timeout` (until its columns and first rows can be read).
    func run(_ sql: String, _ parameters: [SQLValue], timeout: Duration) async throws -> any RowSource

    /// Runs `statements` in one transaction within `timeout`: committed when all succeed, rolled back otherwise.
    func runBatch(_ statements: [(sql: String, parameters: [SQLValue])], timeout: Duration) async throws
        -> BatchOutcome

    /// Runs one statement and reads its first batch of at most `maxRows` rows, then calls `completion` once, on any
    /// thread (on a failure of the first batch the source is cancelled already), never from within this call. `loop`
    /// is the caller's (the agent connection's), on whose thread this is called: a runner may drive the statement's
    /// I/O there. Returns the work to cancel when the request ends first, if there is any to cancel.
    func start(_ sql: String, _ parameters: [SQLValue], timeout: Duration, firstBatch maxRows: Int, loop: EventLoop,
               completion: @escaping @Sendable (Result<StartedStatement, any Error>) -> Void) -> (any RunnerWork)?

    /// The database's dialect ("sqlite", "mysql", "postgres"), told to callers in Welcome; empty when not known.
    var dialectName: String { get }

    /// Takes a connection of its own and begins a transaction on it (AgentTransactions.swift).
    func begin() async throws -> any TransactionSession
}

extension StatementRunner {
    func start(_ sql: String, _ parameters: [SQLValue], timeout: Duration, firstBatch maxRows: Int, loop: EventLoop,
               completion: @escaping @Sendable (Result<StartedStatement, any Error>) -> Void) -> (any RunnerWork)? {
        Task {
            do {
                let source = try await run(sql, parameters, timeout: timeout)
                do {
                    completion(.success(StartedStatement(source: source,
                                                         batch: try await source.nextBatch(maxRows: maxRows))))
                } catch {
                    source.cancel()
                    completion(.failure(error))
                }
            } catch {
                completion(.failure(error))
            }
        }
    }
}

/// A statement that ran: its rows and the first batch of them.
struct StartedStatement: Sendable {
    var source: any RowSource
    var batch: RowBatch
}

/// Work a runner started for a request (a task), cancelled when the request ends before it reports.
protocol RunnerWork: Sendable {
    func cancel()
    /// Cancels it because the request's timeout passed (counted as a statement timeout where the work can tell).
    func expire()
}

extension RunnerWork {
    func expire() { cancel() }
}

extension Task: RunnerWork where Success == Void, Failure == Never {}

extension LoopStatementHandle: RunnerWork {}

/// The rows of one running statement. `nextBatch` is called by one task at a time; `cancel` from any thread, at any
/// time (also after the last batch: then it frees what is left).
protocol RowSource: AnyObject, Sendable {
    /// The result's columns (empty for a statement that returns no rows).
    var columns: [ColumnInfo] { get }
    /// The next rows, at most `maxRows` (at least 1 unless the result is over).
    func nextBatch(maxRows: Int) async throws -> RowBatch
    /// The next rows (as ``nextBatch(maxRows:)``), reported once to `completion` on any thread; returns the work to
    /// cancel when the request ends first, if any.
    func nextBatch(maxRows: Int, completion: @escaping @Sendable (Result<RowBatch, any Error>) -> Void)
        -> (any RunnerWork)?
    /// Ends the statement early and frees its resources (a cursor: its connection).
    func cancel()
}

extension RowSource {
    func nextBatch(maxRows: Int, completion: @escaping @Sendable (Result<RowBatch, any Error>) -> Void)
        -> (any RunnerWork)?
    {
        Task {
            do {
                completion(.success(try await nextBatch(maxRows: maxRows)))
            } catch {
                completion(.failure(error))
            }
        }
    }
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
