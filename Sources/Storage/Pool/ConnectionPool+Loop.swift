import Dispatch
import Synchronization

/// The first rows of a statement driven by a loop
/// (``ConnectionPool/stream(_:_:firstBatch:batchRows:timeout:drivenBy:completion:)``).
public struct LoopStatementStart: Sendable {
    /// The result's columns (names and types).
    public var columns: SQLColumns
    /// The first rows, at most the first batch asked for.
    public var rows: [SQLRow]
    /// The rows after these, read on the connection's worker thread as they are asked for (the stream holds the
    /// pooled connection until it ends); `nil` when the statement ended with ``rows``.
    public var rest: SQLRowStream?
    /// Rows changed, for a statement that returns none.
    public var affectedRows: Int64
}

/// A statement started on a loop, to cancel when its caller is gone first. Safe to call from any thread.
public final class LoopStatementHandle: Sendable {
    private struct State {
        var cancelled = false
        /// The connection and generation of the statement running now.
        var running: (connection: SQLConnection, generation: UInt64)?
    }

    private let state = Mutex(State())
    private let timeout: Duration?

    init(timeout: Duration?) { self.timeout = timeout }

    /// Cancels the statement (on the server when it runs; its connection goes back to the pool once the server
    /// answered); its completion is not called afterwards. Idempotent.
    public func cancel() { cancel(reason: .caller) }

    /// Cancels the statement as ``cancel()`` because the caller's deadline for it passed (the statement's own
    /// timeout, timed from the request rather than from the statement's start): the pool counts it in
    /// ``PoolStatistics/statementTimeouts``.
    public func expire() { cancel(reason: timeout.map { .timeout($0) } ?? .caller) }

    private func cancel(reason: CancelReason) {
        let running = state.withLock { s -> (SQLConnection, UInt64)? in
            guard !s.cancelled else { return nil }
            s.cancelled = true
            return s.running
        }
        guard let (connection, generation) = running else { return }
        // PQcancel opens a connection to the server and waits: never on the loop.
        DispatchQueue.global().async { connection.statementGuard.cancel(generation, reason: reason) }
    }

    var isCancelled: Bool { state.withLock { $0.cancelled } }

    /// Records the running statement; `false` when the handle was cancelled already.
    func started(_ connection: SQLConnection, _ generation: UInt64) -> Bool {
        state.withLock { s in
            guard !s.cancelled else { return false }
            s.running = (connection, generation)
            return true
        }
    }

    func ended() { state.withLock { $0.running = nil } }
}

extension ConnectionPool {
    /// `true` when ``stream(_:_:firstBatch:batchRows:timeout:drivenBy:completion:)`` drives statements on the loop
    /// (PostgreSQL); with other drivers it runs them on the connections' worker threads.
    public var drivesStatementsOnLoop: Bool { connectorDrivesOnLoop }

    /// Runs a statement on a pooled connection driven by `loop` (PostgreSQL: libpq's non-blocking calls on the loop's
    /// thread, no worker thread involved) and calls `completion` on the loop's thread with its first rows, at most
    /// `firstBatch` (never from within this call). When more rows follow, they come as a row stream
    /// (``LoopStatementStart/rest``, `batchRows` a batch) read on the connection's worker thread, which holds the
    /// connection until it ends; otherwise the connection is back in the pool before `completion` runs.
    ///
    /// The bounds and counters are the pool's: the acquire timeout, the statement timeout (`timeout`, from the
    /// start to the last row; past it the statement is cancelled on the server with `PQcancel` and the result is
    /// ``StorageError/timeout(_:)``), a broken connection closed and replaced. With another driver the statement
    /// runs as ``stream(_:_:batchRows:timeout:on:completion:)`` on the worker thread (its batches of `firstBatch`
    /// rows) and the first batch is read from that stream.
    ///
    /// Returns a handle that cancels the statement (then `completion` is not called).
    @discardableResult
    public func stream(_ sql: String, _ parameters: [SQLValue], firstBatch: Int, batchRows: Int = 1000,
                       timeout: Duration? = nil, drivenBy loop: any StorageLoop,
                       completion: @escaping @Sendable (Result<LoopStatementStart, StorageError>) -> Void)
        -> LoopStatementHandle
    {
        let handle = LoopStatementHandle(timeout: timeout)
        #if PostgreSQL
        guard connectorDrivesOnLoop else {
            streamOnWorker(sql, parameters, firstBatch: firstBatch, batchRows: batchRows, timeout: timeout,
                           loop: loop, handle: handle, completion: completion)
            return handle
        }
        acquire { [self] result in
            // Posted even on the loop's own thread, so that `completion` never runs inside this call.
            loop.execute { [self] in
                switch result {
                case .failure(let error):
                    if !handle.isCancelled { completion(.failure(error)) }
                case .success(let connection):
                    LoopStatementRun.start(pool: self, connection: connection, sql: sql, parameters: parameters,
                                           firstBatch: max(1, firstBatch), batchRows: max(1, batchRows),
                                           timeout: timeout, loop: loop, handle: handle, completion: completion)
                }
            }
        }
        #else
        // Only PostgreSQL connections are driven by a loop; without its driver every statement runs on a worker.
        streamOnWorker(sql, parameters, firstBatch: firstBatch, batchRows: batchRows, timeout: timeout,
                       loop: loop, handle: handle, completion: completion)
        #endif
        return handle
    }

    /// The same on the worker threads, for drivers a loop cannot drive.
    private func streamOnWorker(_ sql: String, _ parameters: [SQLValue], firstBatch: Int, batchRows: Int,
                                timeout: Duration?, loop: any StorageLoop, handle: LoopStatementHandle,
                                completion: @escaping @Sendable (Result<LoopStatementStart, StorageError>) -> Void) {
        stream(sql, parameters, batchRows: max(1, firstBatch), timeout: timeout, on: ImmediateExecutor.shared) {
            result in
            switch result {
            case .failure(let error):
                loop.execute { if !handle.isCancelled { completion(.failure(error)) } }
            case .success(let stream):
                stream.next(on: ImmediateExecutor.shared) { next in
                    let outcome = next.map { rows in
                        LoopStatementStart(columns: stream.columns, rows: rows ?? [],
                                           rest: stream.isFinished ? nil : stream, affectedRows: 0)
                    }
                    loop.execute {
                        if handle.isCancelled {
                            stream.cancel(on: ImmediateExecutor.shared)
                        } else {
                            completion(outcome)
                        }
                    }
                }
            }
        }
    }
}

#if PostgreSQL
/// One statement driven by a loop on a held pooled connection, from its start to its end or hand-over.
///
/// `@unchecked Sendable`: used on the loop's thread only (the pool's callbacks hop there first); the closures that
/// capture it run there too.
private final class LoopStatementRun: @unchecked Sendable {
    private let pool: ConnectionPool
    private let connection: SQLConnection
    private let statement: PostgresLoopStatement
    private let loop: any StorageLoop
    private let handle: LoopStatementHandle
    private let completion: @Sendable (Result<LoopStatementStart, StorageError>) -> Void
    private let generation: UInt64
    private let firstBatch: Int
    private let batchRows: Int
    private let timeout: Duration?
    private let started = ContinuousClock.now
    private var timer: UInt64?
    private var watch: (any StorageLoopWatch)?

    private init(pool: ConnectionPool, connection: SQLConnection, statement: PostgresLoopStatement,
                 loop: any StorageLoop, handle: LoopStatementHandle, generation: UInt64, firstBatch: Int,
                 batchRows: Int, timeout: Duration?,
                 completion: @escaping @Sendable (Result<LoopStatementStart, StorageError>) -> Void) {
        self.pool = pool
        self.connection = connection
        self.statement = statement
        self.loop = loop
        self.handle = handle
        self.generation = generation
        self.firstBatch = firstBatch
        self.batchRows = batchRows
        self.timeout = timeout
        self.completion = completion
    }

    /// Loop thread: sends the statement and watches the connection's socket.
    static func start(pool: ConnectionPool, connection: SQLConnection, sql: String, parameters: [SQLValue],
                      firstBatch: Int, batchRows: Int, timeout: Duration?, loop: any StorageLoop,
                      handle: LoopStatementHandle,
                      completion: @escaping @Sendable (Result<LoopStatementStart, StorageError>) -> Void) {
        guard !handle.isCancelled else { return pool.release(connection) }
        guard let driver = connection.box.driver as? PostgresConnection else {
            pool.release(connection)
            return completion(.failure(.connectionLost(.init("the connection is closed"))))
        }
        let guardian = connection.statementGuard
        let generation = guardian.begin(timeout: nil)
        guard handle.started(connection, generation) else {
            guardian.end(generation)
            return pool.release(connection)
        }
        let statement: PostgresLoopStatement
        do {
            statement = try PostgresLoopStatement(connection: driver, sql: sql, parameters: parameters)
        } catch {
            guardian.end(generation)
            handle.ended()
            let storageError = StorageError.wrap(error)
            if storageError.breaksConnection { connection.markBroken() }
            pool.release(connection)
            return completion(.failure(storageError))
        }
        let run = LoopStatementRun(pool: pool, connection: connection, statement: statement, loop: loop,
                                   handle: handle, generation: generation, firstBatch: firstBatch,
                                   batchRows: batchRows, timeout: timeout, completion: completion)
        if let timeout {
            // The cancel runs on the timer's queue (PQcancel waits on the server), never on the loop.
            run.timer = StatementTimer.shared.schedule(after: timeout) {
                guardian.cancel(generation, reason: .timeout(timeout))
            }
        }
        do {
            run.watch = try loop.watch(fd: statement.socket, read: true, write: statement.wantsWrite) {
                readable, writable in run.ready(readable: readable, writable: writable)
            }
        } catch {
            // The poller refused the socket: drive it on the worker instead is not possible mid-statement, so the
            // connection is dropped (the server's answer is never read) and replaced.
            connection.markBroken()
            run.end(.failure(.other(.init("cannot watch the database socket: \(error)", driver: "postgres"))))
            return
        }
        // Input may be buffered already (libpq reads ahead): look once without waiting for an event.
        run.ready(readable: false, writable: false)
    }

    /// Loop thread: the socket is ready (or a first look).
    private func ready(readable: Bool, writable: Bool) {
        guard watch != nil || (!readable && !writable) else { return }
        switch statement.advance(readable: readable, writable: writable, maxRows: firstBatch) {
        case .waiting(let write):
            watch?.update(read: true, write: write)
        case .finished:
            if let failure = statement.failure {
                end(.failure(failure))
            } else {
                end(.success(LoopStatementStart(columns: statement.columns, rows: statement.takeRows(), rest: nil,
                                                affectedRows: statement.affectedRows)))
            }
        case .batchFull:
            handOver()
        }
    }

    private func stopWatching() {
        watch?.cancel()
        watch = nil
        if let timer { StatementTimer.shared.cancel(timer) }
        timer = nil
    }

    /// The statement is over: the connection goes back to the pool, then the caller hears (unless it left).
    private func end(_ outcome: Result<LoopStatementStart, StorageError>) {
        stopWatching()
        let reason = connection.statementGuard.end(generation)
        handle.ended()
        var outcome = outcome
        if case .failure(let error) = outcome, error.breaksConnection { connection.markBroken() }
        // A statement whose cancel was sent is reported as timed out even when it ended anyway (as on the worker).
        if case .timeout(let limit) = reason {
            pool.noteStatementTimeout()
            outcome = .failure(.statementTimeout(limit, dialect: connection.dialect))
        } else if reason == .caller, let timeout,
                  ContinuousClock.now - started >= timeout - min(timeout / 10, .milliseconds(50)) {
            // Its caller gave up at (about) the same deadline: the agent's timer for the request, or the agent://
            // driver's, which started a little earlier and sent Cancel. A timeout all the same.
            pool.noteStatementTimeout()
        }
        pool.release(connection)
        if reason != .caller, !handle.isCancelled { completion(outcome) }
    }

    /// The first batch is full and more rows may come: the rest is read by a stream on the worker thread.
    private func handOver() {
        stopWatching()
        let rows = statement.takeRows()
        let columns = statement.columns
        let driverStream = statement.handOver()
        let remaining = timeout.map { $0 - (ContinuousClock.now - started) }
        let pool = self.pool
        let connection = self.connection
        pool.noteStreamOpened()
        let rest = connection.adoptStream(driverStream, generation: generation, batchRows: batchRows,
                                          timeout: timeout, remaining: remaining) { timedOut in
            pool.noteStreamEnded(timedOut: timedOut)
            pool.release(connection)
        }
        handle.ended()
        if handle.isCancelled || connection.statementGuard.cancelReason(generation) == .caller {
            rest.cancel(on: ImmediateExecutor.shared)
            return
        }
        completion(.success(LoopStatementStart(columns: columns, rows: rows, rest: rest, affectedRows: 0)))
    }
}
#endif
