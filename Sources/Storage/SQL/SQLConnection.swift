import Dispatch
import Logging
import SwitchyardCore
import Synchronization

/// One database connection with its own worker thread. Statements run on that thread in the order they were
/// submitted; callers await them (or get a callback on their executor), so no caller thread blocks.
///
/// Get one from ``ConnectionPool/withConnection(_:)`` (preferred) or open a bare one with
/// ``connect(to:connectTimeout:logger:)``. Safe to use from any thread or task; statements from concurrent
/// callers are serialized. A connection given out by the pool must not be used after the closure returns.
///
/// A statement with a timeout that runs past it is cancelled on the server (SQLite `sqlite3_interrupt`,
/// PostgreSQL `PQcancel`, MySQL/MariaDB `KILL QUERY` from a second connection); the caller gets
/// ``StorageError/timeout(_:)`` and the connection stays usable. While a ``SQLRowStream`` is open, the
/// connection runs nothing else: later statements wait until the stream is finished or cancelled.
public final class SQLConnection: SQLQueryable, Sendable {
    /// An id unique in this process, for logs.
    public let id: Int
    /// The SQL dialect of the database.
    public let dialect: SQLDialect

    private let worker: WorkerThread
    let box: DriverBox
    private let broken = Atomic<Bool>(false)
    private let closed = Atomic<Bool>(false)
    /// Generations and server-side cancels of this connection's statements.
    let statementGuard: StatementGuard
    /// Holds back the jobs submitted while a stream is open.
    private let gate = Mutex(Gate())

    /// A job for the worker thread; `false` when it will not run (the connection is closed).
    typealias Job = @Sendable (_ runs: Bool) -> Void

    private struct Gate {
        /// A stream's start job was submitted and the stream has not ended.
        var streamOpen = false
        /// Jobs submitted while a stream is open, in order; the flag marks a stream's start job.
        var held: [(job: Job, opensStream: Bool)] = []
    }

    /// The driver object, touched only by jobs running on `worker`.
    ///
    /// `@unchecked Sendable`: the class itself is not thread-safe, but every access happens inside a job of the
    /// single worker thread (jobs run one at a time), so there is never concurrent access.
    final class DriverBox: @unchecked Sendable {
        var driver: DriverConnection?
        init(_ driver: DriverConnection?) { self.driver = driver }
    }

    private static let nextID = Atomic<Int>(1)

    private init(id: Int, dialect: SQLDialect, worker: WorkerThread, box: DriverBox,
                 canceller: (any DriverCanceller)?) {
        self.id = id
        self.dialect = dialect
        self.worker = worker
        self.box = box
        self.statementGuard = StatementGuard(canceller: canceller)
    }

    /// Opens a connection on a new worker thread and calls `completion` there. Used by the pool.
    static func open(connector: any DriverConnector, timeout: Duration,
                     completion: @escaping @Sendable (Result<SQLConnection, StorageError>) -> Void) {
        let id = nextID.add(1, ordering: .relaxed).oldValue
        let worker = WorkerThread(name: "storage-\(connector.dialect.rawValue)-\(id)")
        let box = DriverBox(nil)
        worker.submit {
            do {
                let driver = try connector.connect(timeout: timeout)
                box.driver = driver
                completion(.success(SQLConnection(id: id, dialect: connector.dialect, worker: worker, box: box,
                                                  canceller: driver.makeCanceller())))
            } catch {
                worker.stop()
                completion(.failure(StorageError.wrap(error)))
            }
        }
    }

    /// Opens a bare connection, outside any pool. Close it with ``close()``.
    ///
    /// - Parameters:
    ///   - url: A database URL (see ``DatabaseURL``).
    ///   - connectTimeout: How long to wait for the server.
    ///   - logger: Where to log.
    public static func connect(to url: String, connectTimeout: Duration = .seconds(5),
                               logger: Logger) async throws -> SQLConnection {
        let parsed = try DatabaseURL(url)
        let connector = try Drivers.connector(for: parsed, options: DriverOptions())
        let connection = try await withCheckedThrowingContinuation { continuation in
            open(connector: connector, timeout: connectTimeout) { continuation.resume(with: $0) }
        }
        connection.connector = connector
        logger.debug("storage connection opened", metadata: ["storage.url": "\(parsed)", "connection.id": "\(connection.id)"])
        return connection
    }

    /// A connector kept alive by a bare connection (the SQLite in-memory anchor); released on close.
    private nonisolated(unsafe) var connector: (any DriverConnector)?
    // nonisolated(unsafe): written once right after `open`, before the connection is shared, and read only in
    // `close`, which runs at most once (guarded by `closed`).

    /// A connection dropped without ``close()`` is closed on its worker thread, which then ends.
    deinit { close() }

    /// `true` once a statement failed in a way that leaves the connection unusable (see
    /// ``StorageError/breaksConnection``), or after ``close()``.
    public var isBroken: Bool { broken.load(ordering: .relaxed) || closed.load(ordering: .relaxed) }

    /// Runs a statement on the worker thread. Throws ``StorageError``.
    public func query(_ sql: String, _ parameters: [SQLValue]) async throws -> SQLResult {
        try await query(sql, parameters, timeout: nil)
    }

    /// Runs a statement on the worker thread; when it runs longer than `timeout` (counted from when it starts on
    /// the connection, after the statements queued before it), it is cancelled on the server and this throws
    /// ``StorageError/timeout(_:)`` (whether or not the server had finished it: it may have been applied). The
    /// connection stays usable. `nil`: no timeout.
    public func query(_ sql: String, _ parameters: [SQLValue], timeout: Duration?) async throws -> SQLResult {
        try await withCheckedThrowingContinuation { continuation in
            submit(timeout: timeout, { driver in try driver.execute(sql, parameters) }) {
                continuation.resume(with: $0)
            }
        }
    }

    /// Runs a statement and calls `completion` on `executor`.
    public func query(_ sql: String, _ parameters: [SQLValue], on executor: any StorageExecutor,
                      completion: @escaping @Sendable (Result<SQLResult, StorageError>) -> Void) {
        query(sql, parameters, timeout: nil, on: executor, completion: completion)
    }

    /// Runs a statement with a timeout (as ``query(_:_:timeout:)``) and calls `completion` on `executor`.
    public func query(_ sql: String, _ parameters: [SQLValue], timeout: Duration?, on executor: any StorageExecutor,
                      completion: @escaping @Sendable (Result<SQLResult, StorageError>) -> Void) {
        submit(timeout: timeout, { driver in try driver.execute(sql, parameters) }) { result in
            executor.execute { completion(result) }
        }
    }

    /// Starts a statement whose rows are read batch by batch, only as the caller asks for them (see
    /// ``SQLRowStream``): the server produces rows as they are read, so a large result never sits in memory.
    /// Returns once the statement started and its columns are known. Until the stream is finished or cancelled,
    /// the connection runs nothing else.
    ///
    /// - Parameters:
    ///   - sql: One statement with `?` placeholders.
    ///   - parameters: Bound in order.
    ///   - batchRows: The most rows one ``SQLRowStream/next()`` returns (at least 1).
    ///   - timeout: When the stream is not finished this long after it started, the statement is cancelled on the
    ///     server and the next ``SQLRowStream/next()`` throws ``StorageError/timeout(_:)``. `nil`: no timeout.
    public func stream(_ sql: String, _ parameters: [SQLValue] = [], batchRows: Int = 1000,
                       timeout: Duration? = nil) async throws -> SQLRowStream {
        try await withCheckedThrowingContinuation { continuation in
            openStream(sql, parameters, batchRows: batchRows, timeout: timeout, onEnd: nil) {
                continuation.resume(with: $0)
            }
        }
    }

    /// Starts a stream (as ``stream(_:_:batchRows:timeout:)``) and calls `completion` on `executor`.
    public func stream(_ sql: String, _ parameters: [SQLValue], batchRows: Int = 1000, timeout: Duration? = nil,
                       on executor: any StorageExecutor,
                       completion: @escaping @Sendable (Result<SQLRowStream, StorageError>) -> Void) {
        openStream(sql, parameters, batchRows: batchRows, timeout: timeout, onEnd: nil) { result in
            executor.execute { completion(result) }
        }
    }

    /// Starts a stream and calls `completion` on the worker thread. `onEnd` runs once when the stream ends
    /// (finished, failed, cancelled, or it could not start), after the connection is free again; its argument
    /// says whether the stream's timeout ended it.
    func openStream(_ sql: String, _ parameters: [SQLValue], batchRows: Int, timeout: Duration?,
                    onEnd: (@Sendable (_ timedOut: Bool) -> Void)?,
                    completion: @escaping @Sendable (Result<SQLRowStream, StorageError>) -> Void) {
        let box = self.box
        enqueue(opensStream: true) { [self] runs in
            guard runs, let driver = box.driver else {
                streamEnded()
                onEnd?(false)
                completion(.failure(.connectionLost(.init("the connection is closed"))))
                return
            }
            driver.willStart(timeout: timeout)
            let generation = statementGuard.begin(timeout: nil)
            let started = ContinuousClock.now
            var timer: UInt64?
            if let timeout {
                // Armed before the statement starts, so that a start that hangs is cancelled too.
                timer = StatementTimer.shared.schedule(after: timeout) { [self] in
                    statementGuard.cancel(generation, reason: .timeout(timeout))
                }
            }
            do {
                let driverStream = try driver.stream(sql, parameters)
                if let timer { StatementTimer.shared.cancel(timer) }
                if case .timeout(let limit) = statementGuard.cancelReason(generation) {
                    driverStream.close()
                    throw StorageError.statementTimeout(limit, dialect: dialect)
                }
                let remaining = timeout.map { $0 - (ContinuousClock.now - started) }
                let core = StreamCore(connection: self, driver: driverStream, generation: generation,
                                      batchRows: max(1, batchRows), timeout: timeout, remaining: remaining,
                                      onEnd: onEnd)
                completion(.success(SQLRowStream(core: core)))
            } catch {
                if let timer { StatementTimer.shared.cancel(timer) }
                let reason = statementGuard.end(generation)
                var storageError = StorageError.wrap(error)
                if storageError.breaksConnection { markBroken() }
                if case .timeout(let limit) = reason { storageError = .statementTimeout(limit, dialect: dialect) }
                streamEnded()
                onEnd?(storageError.isStatementTimeout)
                completion(.failure(storageError))
            }
        }
    }

    /// Runs `body` inside a transaction on this connection: `BEGIN` (``SQLDialect/beginTransaction``), then
    /// `COMMIT` when it returns or `ROLLBACK` when it throws (the error is rethrown).
    public func transaction<T>(_ body: (SQLConnection) async throws -> T) async throws -> T {
        _ = try await query(dialect.beginTransaction, [])
        let value: T
        do {
            value = try await body(self)
        } catch {
            do { _ = try await query("ROLLBACK", []) } catch { markBroken() }
            throw error
        }
        _ = try await query("COMMIT", [])
        return value
    }

    /// `true` when the database answers a trivial statement.
    public func ping() async -> Bool {
        (try? await run { driver in
            guard driver.ping() else { throw StorageError.connectionLost(.init("ping failed")) }
            return true
        }) ?? false
    }

    /// Pings on the worker thread and reports to `completion` there. Used by the pool.
    func ping(completion: @escaping @Sendable (Bool) -> Void) {
        submit({ driver in
            guard driver.ping() else { throw StorageError.connectionLost(.init("ping failed")) }
            return true
        }) { result in
            completion((try? result.get()) ?? false)
        }
    }

    /// Closes the connection after the statements already queued and ends its worker thread.
    public func close() async {
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            close { continuation.resume() }
        }
    }

    /// Closes the connection and calls `completion` on the worker thread once closed (at once if it was).
    func close(completion: (@Sendable () -> Void)? = nil) {
        guard !closed.exchange(true, ordering: .acquiringAndReleasing) else {
            completion?()
            return
        }
        let box = self.box
        let worker = self.worker
        let connector = self.connector
        enqueue { runs in
            if runs {
                box.driver?.close()
                box.driver = nil
                connector?.shutdown()
                worker.stop()
            }
            completion?()
        }
    }

    func markBroken() { broken.store(true, ordering: .relaxed) }

    private func run<T: Sendable>(_ body: @escaping @Sendable (DriverConnection) throws -> T) async throws -> T {
        try await withCheckedThrowingContinuation { continuation in
            submit(body) { continuation.resume(with: $0) }
        }
    }

    /// Runs `body` with the driver on the worker thread and passes its result to `completion` (on the worker
    /// thread, or inline when the connection is closed). With a timeout, the statement is cancelled on the server
    /// when it runs longer, and the result is ``StorageError/timeout(_:)``.
    private func submit<T: Sendable>(timeout: Duration? = nil,
                                     _ body: @escaping @Sendable (DriverConnection) throws -> T,
                                     completion: @escaping @Sendable (Result<T, StorageError>) -> Void) {
        let box = self.box
        enqueue { [self] runs in
            guard runs, let driver = box.driver else {
                completion(.failure(.connectionLost(.init("the connection is closed"))))
                return
            }
            driver.willStart(timeout: timeout)
            let generation = statementGuard.begin(timeout: timeout, grace: driver.timeoutGrace)
            var result: Result<T, StorageError>
            do {
                result = .success(try body(driver))
            } catch {
                result = .failure(StorageError.wrap(error))
            }
            let reason = statementGuard.end(generation)
            if case .failure(let error) = result, error.breaksConnection { markBroken() }
            // A statement whose cancel was sent is reported as timed out even when it ended anyway (MariaDB
            // answers a killed SLEEP with a row; the cancel may have come as it finished), and when the cancel
            // could not be delivered and the socket was shut down instead (the connection is then broken).
            if case .timeout(let limit) = reason {
                result = .failure(.statementTimeout(limit, dialect: dialect))
            }
            completion(result)
        }
    }

    // MARK: - The stream gate

    /// Turns the statement a loop started on this held connection (nothing queued on the worker) into a row stream
    /// read on the worker thread from here on; `onEnd` as for ``openStream(_:_:batchRows:timeout:onEnd:completion:)``.
    func adoptStream(_ driver: DriverStream, generation: UInt64, batchRows: Int, timeout: Duration?,
                     remaining: Duration?, onEnd: @escaping @Sendable (_ timedOut: Bool) -> Void) -> SQLRowStream {
        gate.withLock { $0.streamOpen = true }
        let core = StreamCore(connection: self, driver: driver, generation: generation, batchRows: max(1, batchRows),
                              timeout: timeout, remaining: remaining, onEnd: onEnd)
        return SQLRowStream(core: core)
    }

    /// Queues a job on the worker thread, or holds it back while a stream is open. `opensStream`: the job starts a
    /// stream; the jobs after it are held until ``streamEnded()``.
    private func enqueue(opensStream: Bool = false, _ job: @escaping Job) {
        let rejected = gate.withLock { g -> Bool in
            if g.streamOpen {
                g.held.append((job, opensStream))
                return false
            }
            guard worker.submit({ job(true) }) else { return true }
            if opensStream { g.streamOpen = true }
            return false
        }
        if rejected { job(false) }
    }

    /// Queues a job of the open stream on the worker thread, past the gate. Returns `false` when the worker has
    /// stopped (the job will not run).
    func submitStreamJob(_ job: @escaping @Sendable () -> Void) -> Bool {
        worker.submit(job)
    }

    /// Worker thread: the open stream ended; the held jobs go to the worker in order, up to the next stream start.
    func streamEnded() {
        let rejected = gate.withLock { g -> [Job] in
            g.streamOpen = false
            var rejected: [Job] = []
            while !g.held.isEmpty {
                let (job, opensStream) = g.held.removeFirst()
                guard worker.submit({ job(true) }) else {
                    rejected.append(job)
                    continue
                }
                if opensStream {
                    g.streamOpen = true
                    break
                }
            }
            return rejected
        }
        for job in rejected { job(false) }
    }
}

extension StorageError {
    /// `error` when it is a StorageError, else `.other` with its description.
    static func wrap(_ error: any Error) -> StorageError {
        (error as? StorageError) ?? .other(.init("\(error)"))
    }

    /// `true` for the error of a statement cancelled by its timeout (not a pool's acquire timeout).
    public var isStatementTimeout: Bool {
        if case .timeout(let detail) = self { return detail.code == "statement_timeout" }
        return false
    }

    /// The error of a statement cancelled because it ran longer than `timeout`.
    static func statementTimeout(_ timeout: Duration, dialect: SQLDialect) -> StorageError {
        .timeout(.init("the statement ran longer than its timeout of \(timeout.millisecondsRoundedUp) ms "
                        + "and was cancelled on the server", code: "statement_timeout", driver: dialect.rawValue))
    }
}
