import Logging
import Synchronization

/// One database connection with its own worker thread. Statements run on that thread in the order they were
/// submitted; callers await them (or get a callback on their executor), so no caller thread blocks.
///
/// Get one from ``ConnectionPool/withConnection(_:)`` (preferred) or open a bare one with
/// ``connect(to:connectTimeout:logger:)``. Safe to use from any thread or task; statements from concurrent
/// callers are serialized. A connection given out by the pool must not be used after the closure returns.
public final class SQLConnection: SQLQueryable, Sendable {
    /// An id unique in this process, for logs.
    public let id: Int
    /// The SQL dialect of the database.
    public let dialect: SQLDialect

    private let worker: WorkerThread
    private let box: DriverBox
    private let broken = Atomic<Bool>(false)
    private let closed = Atomic<Bool>(false)

    /// The driver object, touched only by jobs running on `worker`.
    ///
    /// `@unchecked Sendable`: the class itself is not thread-safe, but every access happens inside a job of the
    /// single worker thread (jobs run one at a time), so there is never concurrent access.
    private final class DriverBox: @unchecked Sendable {
        var driver: DriverConnection?
        init(_ driver: DriverConnection?) { self.driver = driver }
    }

    private static let nextID = Atomic<Int>(1)

    private init(id: Int, dialect: SQLDialect, worker: WorkerThread, box: DriverBox) {
        self.id = id
        self.dialect = dialect
        self.worker = worker
        self.box = box
    }

    /// Opens a connection on a new worker thread and calls `completion` there. Used by the pool.
    static func open(connector: any DriverConnector, timeout: Duration,
                     completion: @escaping @Sendable (Result<SQLConnection, StorageError>) -> Void) {
        let id = nextID.add(1, ordering: .relaxed).oldValue
        let worker = WorkerThread(name: "storage-\(connector.dialect.rawValue)-\(id)")
        let box = DriverBox(nil)
        worker.submit {
            do {
                box.driver = try connector.connect(timeout: timeout)
                completion(.success(SQLConnection(id: id, dialect: connector.dialect, worker: worker, box: box)))
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
        try await run { driver in try driver.execute(sql, parameters) }
    }

    /// Runs a statement and calls `completion` on `executor`.
    public func query(_ sql: String, _ parameters: [SQLValue], on executor: any StorageExecutor,
                      completion: @escaping @Sendable (Result<SQLResult, StorageError>) -> Void) {
        submit({ driver in try driver.execute(sql, parameters) }) { result in
            executor.execute { completion(result) }
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
        let accepted = worker.submit {
            box.driver?.close()
            box.driver = nil
            connector?.shutdown()
            worker.stop()
            completion?()
        }
        if !accepted { completion?() }
    }

    func markBroken() { broken.store(true, ordering: .relaxed) }

    private func run<T: Sendable>(_ body: @escaping @Sendable (DriverConnection) throws -> T) async throws -> T {
        try await withCheckedThrowingContinuation { continuation in
            submit(body) { continuation.resume(with: $0) }
        }
    }

    /// Runs `body` with the driver on the worker thread and passes its result to `completion` (on the worker
    /// thread, or inline when the connection is closed).
    private func submit<T: Sendable>(_ body: @escaping @Sendable (DriverConnection) throws -> T,
                                     completion: @escaping @Sendable (Result<T, StorageError>) -> Void) {
        let box = self.box
        let accepted = worker.submit { [self] in
            guard let driver = box.driver else {
                completion(.failure(.connectionLost(.init("the connection is closed"))))
                return
            }
            do {
                completion(.success(try body(driver)))
            } catch {
                let storageError = StorageError.wrap(error)
                if storageError.breaksConnection { markBroken() }
                completion(.failure(storageError))
            }
        }
        if !accepted { completion(.failure(.connectionLost(.init("the connection is closed")))) }
    }
}

extension StorageError {
    /// `error` when it is a StorageError, else `.other` with its description.
    static func wrap(_ error: any Error) -> StorageError {
        (error as? StorageError) ?? .other(.init("\(error)"))
    }
}
