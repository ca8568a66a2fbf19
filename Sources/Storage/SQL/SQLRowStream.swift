import Dispatch
import Synchronization

/// The rows of one statement, read from the server batch by batch as the caller asks for them.
///
///     let stream = try await pool.stream("SELECT id, name FROM users", [], batchRows: 500)
///     while let batch = try await stream.next() {
///         for row in batch { ... }
///     }
///
/// Nothing is read ahead: the driver fetches the next rows only when ``next()`` is called (SQLite steps the
/// statement, PostgreSQL reads in single-row mode, MySQL/MariaDB fetches an unbuffered result), so the server
/// waits on the network while the caller is busy and memory holds one batch.
///
/// A stream must be read to the end (``next()`` returns `nil`) or ``cancel()``ed: until then its connection runs
/// nothing else. A stream released early is cancelled. Cancelling stops the statement on the server and leaves
/// the connection ready for the next one.
///
/// Safe to call from any thread; concurrent ``next()`` calls are served one after another.
public final class SQLRowStream: Sendable {
    private let core: StreamCore

    init(core: StreamCore) {
        self.core = core
    }

    deinit {
        if !core.isFinished { core.cancel(nil) }
    }

    /// The columns of the result (names and types), known before the first batch.
    public var columns: SQLColumns { core.columns }

    /// The most rows one batch holds.
    public var batchRows: Int { core.batchRows }

    /// Rows read from the driver so far (a driver may read one row ahead of the batches to learn the column
    /// types). It stays put while the caller does not ask for more.
    public var rowsFetched: Int { core.rowsFetched }

    /// `true` once the last row was handed out, the stream failed or it was cancelled.
    public var isFinished: Bool { core.isFinished }

    /// The next batch of at most ``batchRows`` rows, or `nil` at the end (and after a cancel). Throws
    /// ``StorageError`` when the statement fails, ``StorageError/timeout(_:)`` when its timeout passed; the
    /// stream is then finished.
    public func next() async throws -> [SQLRow]? {
        try await withCheckedThrowingContinuation { continuation in
            core.next { continuation.resume(with: $0) }
        }
    }

    /// Reads the next batch (as ``next()``) and calls `completion` on `executor`.
    public func next(on executor: any StorageExecutor,
                     completion: @escaping @Sendable (Result<[SQLRow]?, StorageError>) -> Void) {
        core.next { result in executor.execute { completion(result) } }
    }

    /// Stops the statement (on the server too, where rows are still coming) and returns once the connection is
    /// ready for the next statement. A no-op on a finished stream.
    public func cancel() async {
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            core.cancel { continuation.resume() }
        }
    }

    /// Stops the statement (as ``cancel()``) without waiting; `completion`, if any, runs on `executor` once the
    /// connection is ready.
    public func cancel(on executor: any StorageExecutor, completion: (@Sendable () -> Void)? = nil) {
        core.cancel { if let completion { executor.execute(completion) } }
    }
}

/// The state of one stream, shared by its ``SQLRowStream`` and the jobs on the connection's worker thread.
final class StreamCore: Sendable {
    let connection: SQLConnection
    let columns: SQLColumns
    let batchRows: Int
    let generation: UInt64
    private let driver: DriverStreamBox
    private let onEnd: (@Sendable (_ timedOut: Bool) -> Void)?
    private let state = Mutex(State())

    private struct State {
        var finished = false
        /// An error for the next `next()` (the stream was ended by its timeout while nobody was reading).
        var pendingError: StorageError?
        var rowsFetched = 0
        var timer: UInt64?
    }

    /// The driver's stream, used on the worker thread only.
    ///
    /// `@unchecked Sendable`: touched only by jobs of the connection's single worker thread, one at a time.
    private final class DriverStreamBox: @unchecked Sendable {
        var stream: DriverStream?
        init(_ stream: DriverStream) { self.stream = stream }
    }

    /// Worker thread: wraps a started driver stream. `remaining`: what is left of the timeout.
    init(connection: SQLConnection, driver: DriverStream, generation: UInt64, batchRows: Int, timeout: Duration?,
         remaining: Duration?, onEnd: (@Sendable (_ timedOut: Bool) -> Void)?) {
        self.connection = connection
        self.columns = driver.columns
        self.batchRows = batchRows
        self.generation = generation
        self.driver = DriverStreamBox(driver)
        self.onEnd = onEnd
        state.withLock { $0.rowsFetched = driver.rowsFetched }
        if driver.isFinished {
            finish()
        } else if let timeout, let remaining {
            let id = StatementTimer.shared.schedule(after: max(.zero, remaining)) { [weak self] in
                self?.timedOut(timeout)
            }
            state.withLock { $0.timer = id }
        }
    }

    var rowsFetched: Int { state.withLock { $0.rowsFetched } }
    var isFinished: Bool { state.withLock { $0.finished } }

    /// Fetches the next batch on the worker thread and passes it to `completion` there.
    func next(_ completion: @escaping @Sendable (Result<[SQLRow]?, StorageError>) -> Void) {
        let accepted = connection.submitStreamJob { [self] in
            if let ended = ended() {
                completion(ended)
                return
            }
            guard let stream = driver.stream else { return completion(.success(nil)) }
            var result: Result<[SQLRow]?, StorageError>
            do {
                let rows = try stream.fetch(batchRows)
                result = .success(rows.isEmpty && stream.isFinished ? nil : rows)
            } catch {
                result = .failure(StorageError.wrap(error))
            }
            state.withLock { $0.rowsFetched = stream.rowsFetched }
            switch connection.statementGuard.cancelReason(generation) {
            case .timeout(let limit):
                result = .failure(.statementTimeout(limit, dialect: connection.dialect))
            case .caller:
                result = .success(nil)
            case nil:
                break
            }
            if case .failure(let error) = result, error.breaksConnection { connection.markBroken() }
            if case .failure = result {
                finish()
            } else if stream.isFinished || connection.statementGuard.cancelReason(generation) != nil {
                finish()
            }
            completion(result)
        }
        if !accepted { completion(.failure(.connectionLost(.init("the connection is closed")))) }
    }

    /// Worker thread: the answer of `next()` on a finished stream (its pending error once, then the end).
    private func ended() -> Result<[SQLRow]?, StorageError>? {
        state.withLock { s -> Result<[SQLRow]?, StorageError>? in
            guard s.finished else { return nil }
            if let error = s.pendingError {
                s.pendingError = nil
                return .failure(error)
            }
            return .success(nil)
        }
    }

    /// Any thread: cancels the statement on the server (off the caller's thread: it may block), then ends the
    /// stream on the worker thread and calls `completion` there.
    func cancel(_ completion: (@Sendable () -> Void)?) {
        guard !isFinished else {
            completion?()
            return
        }
        DispatchQueue.global().async { [self] in
            connection.statementGuard.cancel(generation, reason: .caller)
            submitFinish(completion)
        }
    }

    /// Timer (a global queue): the timeout passed; cancel on the server and end the stream, leaving the timeout
    /// error for the next `next()`.
    private func timedOut(_ timeout: Duration) {
        connection.statementGuard.cancel(generation, reason: .timeout(timeout))
        let error = StorageError.statementTimeout(timeout, dialect: connection.dialect)
        submitFinish(nil, pendingError: error)
    }

    private func submitFinish(_ completion: (@Sendable () -> Void)?, pendingError: StorageError? = nil) {
        let accepted = connection.submitStreamJob { [self] in
            if !isFinished {
                if let pendingError { state.withLock { $0.pendingError = pendingError } }
                finish()
            }
            completion?()
        }
        if !accepted { completion?() }
    }

    /// Worker thread: discards the rest of the statement, frees the connection for the statements held back, and
    /// tells the owner (the pool) once.
    private func finish() {
        let timer = state.withLock { s -> UInt64?? in
            guard !s.finished else { return .none }
            s.finished = true
            defer { s.timer = nil }
            return .some(s.timer)
        }
        guard case .some(let timer) = timer else { return }
        if let timer { StatementTimer.shared.cancel(timer) }
        if let stream = driver.stream {
            stream.close()
            state.withLock { $0.rowsFetched = stream.rowsFetched }
        }
        driver.stream = nil
        let reason = connection.statementGuard.end(generation)
        connection.streamEnded()
        if case .timeout = reason { onEnd?(true) } else { onEnd?(false) }
    }
}
