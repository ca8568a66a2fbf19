import Reactor
import Storage
import Synchronization

// Transactions across requests (Transaction, id 305): BEGIN pins one pooled connection to the caller's connection;
// every Execute until COMMIT or ROLLBACK runs on it, inside one database transaction. Storage's agent:// driver maps
// its pool's transactions onto this, so that RouteAdmin, the reporter and chat keep their atomicity over the agent.
//
//     none --BEGIN--> beginning --begun--> open(session) --COMMIT/ROLLBACK--> ending --> none
//                                            |  timeout: rolled back --> aborted --ROLLBACK/COMMIT (Error)--> none
//     connection closed: an open (or beginning) transaction is rolled back and its pooled connection given back.

/// A transaction holding one pooled connection. `run` may be called again before an earlier statement finished (the
/// connection runs them in order); `commit`/`rollback` once, last.
protocol TransactionSession: AnyObject, Sendable {
    /// Runs one statement inside the transaction (as ``StatementRunner/run(_:_:timeout:)``).
    func run(_ sql: String, _ parameters: [SQLValue], timeout: Duration) async throws -> any RowSource
    /// Commits and gives the connection back. When the commit fails, the transaction is rolled back (by the
    /// database or the pool) and the error thrown.
    func commit() async throws
    /// Rolls back and gives the connection back (a connection whose rollback fails is dropped by the pool).
    func rollback() async
}

extension StatementRunner {
    /// The database's dialect, for Welcome; nil when not known.
    var dialectName: String { "" }

    /// Starts a transaction on a connection of its own. Runners without transactions refuse.
    func begin() async throws -> any TransactionSession {
        throw TransactionRefusal(kind: .transaction, message: "this agent does not run transactions")
    }
}

/// A transaction request that cannot be served: out of order, over the bound, or rolled back by the agent.
struct TransactionRefusal: Error, Equatable {
    var kind: Switchyard_Dbagent_ErrorKind
    var message: String
}

/// A transaction on a ``ConnectionPool`` connection: `pool.transaction` runs in a task whose body waits for the
/// caller's COMMIT or ROLLBACK, so the pool's own BEGIN/COMMIT/ROLLBACK (and its handling of a failed rollback) apply.
final class PoolTransaction: TransactionSession {
    let connection: SQLConnection
    /// The caller's decision (true: commit) and the body waiting for it.
    private let decision = Mutex<(decided: Bool?, waiting: CheckedContinuation<Bool, Never>?)>((nil, nil))
    /// How `pool.transaction` ended (its COMMIT or ROLLBACK) and who waits for that.
    private let outcome = Mutex<(result: Result<Void, any Error>?, waiting: CheckedContinuation<Void, any Error>?)>(
        (nil, nil))

    private init(connection: SQLConnection) {
        self.connection = connection
    }

    private struct RollbackRequested: Error {}

    /// Takes a connection and runs BEGIN on it (bounded by the pool's acquire timeout). Throws what the pool throws.
    static func begin(on pool: ConnectionPool) async throws -> PoolTransaction {
        let state = BeginState()
        return try await withCheckedThrowingContinuation { continuation in
            state.started.withLock { $0 = continuation }
            Task {
                var result: Result<Void, any Error> = .success(())
                do {
                    try await pool.transaction { connection in
                        let transaction = PoolTransaction(connection: connection)
                        state.session.withLock { $0 = transaction }
                        let commit = await withCheckedContinuation { (end: CheckedContinuation<Bool, Never>) in
                            transaction.decision.withLock { $0.waiting = end }
                            state.started.withLock { $0.take() }?.resume(returning: transaction)
                        }
                        if !commit { throw RollbackRequested() }
                    }
                } catch is RollbackRequested {
                } catch {
                    result = .failure(error)
                }
                if let continuation = state.started.withLock({ $0.take() }) {
                    // BEGIN (or the acquire) failed: no session was handed out.
                    switch result {
                    case .failure(let error): continuation.resume(throwing: error)
                    case .success: continuation.resume(throwing: CancellationError())
                    }
                    return
                }
                state.session.withLock { $0 }?.ended(result)
            }
        }
    }

    /// What the task of a BEGIN shares with its caller.
    private final class BeginState: Sendable {
        let started = Mutex<CheckedContinuation<PoolTransaction, any Error>?>(nil)
        let session = Mutex<PoolTransaction?>(nil)
    }

    /// The pool's transaction is over.
    private func ended(_ result: Result<Void, any Error>) {
        let waiting = outcome.withLock { o -> CheckedContinuation<Void, any Error>? in
            o.result = result
            defer { o.waiting = nil }
            return o.waiting
        }
        waiting?.resume(with: result)
    }

    func run(_ sql: String, _ parameters: [SQLValue], timeout: Duration) async throws -> any RowSource {
        do {
            if PoolStatementRunner.returnsRows(sql) {
                let stream = try await connection.stream(
                    sql, parameters, batchRows: PoolStatementRunner.streamBatchRows, timeout: timeout)
                return StreamSource(stream, timeout: timeout)
            }
            return WholeResultSource(try await connection.query(sql, parameters, timeout: timeout))
        } catch let error as StorageError where error.isStatementTimeout {
            throw RunnerError.timeout(timeout)
        }
    }

    func commit() async throws { try await end(commit: true) }

    func rollback() async { try? await end(commit: false) }

    /// Tells the waiting body what to do, then waits for the pool's COMMIT or ROLLBACK to finish.
    private func end(commit: Bool) async throws {
        let waiting = decision.withLock { d -> CheckedContinuation<Bool, Never>? in
            guard d.decided == nil else { return nil }
            d.decided = commit
            defer { d.waiting = nil }
            return d.waiting
        }
        waiting?.resume(returning: commit)
        try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<Void, any Error>) in
            let done = outcome.withLock { o -> Result<Void, any Error>? in
                if o.result == nil { o.waiting = continuation }
                return o.result
            }
            if let done { continuation.resume(with: done) }
        }
    }
}

/// The transaction state of one caller's connection. Loop-confined (a field of ``AgentConnection``).
enum TransactionPin {
    /// No transaction: statements run on any pooled connection.
    case none
    /// BEGIN runs.
    case beginning
    /// Statements run on the session's connection; the timer rolls it back at the transaction timeout.
    case open(any TransactionSession, TimerHandle?)
    /// COMMIT or ROLLBACK runs.
    case ending
    /// The agent rolled the transaction back (why): statements are refused until the caller ends it.
    case aborted(String)
}

extension AgentConnection {
    /// Where a statement of this connection runs now: any pooled connection (nil), the open transaction's, or nowhere.
    func statementTarget() -> Result<(any TransactionSession)?, TransactionRefusal> {
        switch pin {
        case .none: return .success(nil)
        case .open(let session, _): return .success(session)
        case .beginning, .ending:
            return .failure(TransactionRefusal(kind: .transaction, message:
                "the connection's transaction is beginning or ending: wait for its answer"))
        case .aborted(let why): return .failure(TransactionRefusal(kind: .transaction, message: why))
        }
    }

    /// Runs an admitted Transaction request; answers through the core (Done or Error).
    func runTransaction(_ id: UInt64, _ action: Switchyard_Dbagent_TransactionAction, timeout: Duration) {
        switch (action, pin) {
        case (.begin, .none):
            guard counters.transactions.take(limit: core.limits.maxTransactions) else {
                failed(id, TransactionRefusal(kind: .busy, message:
                    "the agent has \(core.limits.maxTransactions) transactions open"))
                return
            }
            pin = .beginning
            let runner = runner
            tasks[id] = Task { [self] in
                do {
                    let session = try await runner.begin()
                    connection.loop.execute { self.begun(id, session, timeout: timeout) }
                } catch {
                    connection.loop.execute {
                        self.counters.transactions.release()
                        if case .beginning = self.pin { self.pin = .none }
                        self.failed(id, error)
                    }
                }
            }
        case (.commit, .open(let session, let timer)), (.rollback, .open(let session, let timer)):
            timer?.cancel()
            pin = .ending
            tasks[id] = Task { [self] in
                var outcome: (any Error)?
                if action == .commit {
                    do { try await session.commit() } catch { outcome = error }
                } else {
                    await session.rollback()
                }
                let failure = outcome
                connection.loop.execute {
                    self.counters.transactions.release()
                    self.pin = .none
                    if let failure {
                        self.failed(id, failure)
                    } else {
                        self.perform(self.core.batchFinished(id, BatchOutcome(affectedRows: 0, lastInsertID: nil)))
                    }
                }
            }
        case (.commit, .aborted(let why)):
            pin = .none
            failed(id, TransactionRefusal(kind: .transaction, message: why + "; nothing of it was committed"))
        case (.rollback, .aborted), (.rollback, .none):
            pin = .none
            perform(core.batchFinished(id, BatchOutcome(affectedRows: 0, lastInsertID: nil)))
        case (.begin, _):
            failed(id, TransactionRefusal(kind: .transaction, message: "a transaction is open on this connection"))
        case (.commit, .none):
            failed(id, TransactionRefusal(kind: .transaction, message: "no transaction is open on this connection"))
        default:
            failed(id, TransactionRefusal(kind: .transaction, message:
                "the connection's transaction is beginning or ending: wait for its answer"))
        }
    }

    /// BEGIN succeeded: the session is the connection's, unless the request was cancelled or the connection closed
    /// meanwhile (then it is rolled back at once).
    private func begun(_ id: UInt64, _ session: any TransactionSession, timeout: Duration) {
        tasks[id] = nil
        let actions = core.batchFinished(id, BatchOutcome(affectedRows: 0, lastInsertID: nil))
        guard !actions.isEmpty, case .beginning = pin else {
            if case .beginning = pin { pin = .none }
            rollBack(session, byTheAgent: true)
            return
        }
        let timer = connection.loop.schedule(after: timeout) { [weak self] in
            guard let self, case .open(let open, _) = pin, open === session else { return }
            pin = .aborted("the transaction was open longer than its timeout of \(timeout) and was rolled back")
            rollBack(session, byTheAgent: true)
        }
        pin = .open(session, timer)
        perform(actions)
    }

    /// The connection closed: an open transaction is rolled back (one being begun is when its BEGIN comes back).
    func rollBackOnClose() {
        guard case .open(let session, let timer) = pin else { return }
        timer?.cancel()
        pin = .none
        rollBack(session, byTheAgent: true)
    }

    /// Rolls a session back off the loop and frees its slot.
    private func rollBack(_ session: any TransactionSession, byTheAgent: Bool) {
        if byTheAgent { counters.transactionsRolledBack.add() }
        let counters = counters
        Task {
            await session.rollback()
            counters.transactions.release()
        }
    }
}
