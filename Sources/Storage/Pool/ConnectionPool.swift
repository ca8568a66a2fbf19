import Dispatch
import Logging
import SwitchyardCore
import Synchronization

/// A pool of connections to one database.
///
///     let pool = try ConnectionPool(url: "sqlite:data.db", logger: logger)
///     try await pool.execute("INSERT INTO kv (k, v) VALUES (?, ?)", ["a", 1])
///     let rows = try await pool.query("SELECT v FROM kv WHERE k = ?", ["a"]).rows
///     try await pool.transaction { conn in ... }
///     await pool.close()
///
/// Each connection runs its statements on its own worker thread; callers await results or get callbacks on
/// their ``StorageExecutor``, so a reactor loop never blocks on the database.
///
/// Lifecycle of a connection:
///
///     connect (worker thread) --ok--> handed to the oldest waiter, or idle
///        |  fails: backoff doubles up to maxReconnectBackoff; callers that need a new connection meanwhile
///        |         fail fast with connectionFailed
///     idle --acquire--> (idle > healthCheckAfterIdle, or a sibling broke? ping first) --> in use
///     in use --release--> idle, or closed when broken (connection lost) or the pool is closed
///     idle > idleTimeout and more than minConnections open --> closed
///
/// Safe to call from any thread.
public final class ConnectionPool: SQLQueryable, Sendable {
    /// The database the pool connects to.
    public let url: DatabaseURL
    /// The SQL dialect of that database.
    public let dialect: SQLDialect
    /// The settings.
    public let configuration: PoolConfiguration

    private let connector: any DriverConnector
    private let logger: Logger
    private let state: Mutex<State>
    private let timerQueue: DispatchQueue

    typealias Delivery = @Sendable (Result<SQLConnection, StorageError>) -> Void

    private struct IdleConnection {
        var connection: SQLConnection
        var since: ContinuousClock.Instant
    }

    private struct Waiter {
        var id: UInt64
        var deadline: ContinuousClock.Instant
        var deliver: Delivery
    }

    private struct State {
        var idle: [IdleConnection] = []
        var waiters: [Waiter] = []
        var inUse = 0
        var connecting = 0
        var created = 0
        var failed = 0
        var closedCount = 0
        var timeouts = 0
        var highWater = 0
        var consecutiveFailures = 0
        var backoffUntil: ContinuousClock.Instant?
        var lastConnectError: StorageError?
        /// Idle connections released before this instant are pinged before reuse (set when one breaks).
        var suspectBefore: ContinuousClock.Instant?
        var nextWaiterID: UInt64 = 1
        var isClosed = false
        var statementTimeouts = 0
        var openStreams = 0
        /// The instant the waiters' timer is armed for (nil: not armed).
        var waiterTimer: ContinuousClock.Instant?

        var open: Int { inUse + idle.count + connecting }

        mutating func noteOpen() { highWater = max(highWater, open) }
    }

    /// What to do once the lock is released.
    private enum Action {
        case deliver(Delivery, Result<SQLConnection, StorageError>)
        case connect(Int)
        case check(SQLConnection, ContinuousClock.Instant, Delivery)
        case close(SQLConnection)
        /// Arm the waiters' timer for this instant (one timer for all of them: a busy pool queues thousands a second).
        case scheduleTimeout(ContinuousClock.Instant)
    }

    /// Creates a pool for a URL (see ``DatabaseURL``) and starts opening ``PoolConfiguration/minConnections``
    /// in the background. Throws ``StorageError/badURL(_:)`` at once when the URL is bad or its driver is not
    /// in this build; connection errors come from the first calls.
    ///
    /// - Parameters:
    ///   - url: The database URL.
    ///   - configuration: Sizes, timeouts and backoff.
    ///   - logger: Where the pool logs connects, failures and recoveries (info and below).
    public convenience init(url: String, configuration: PoolConfiguration = PoolConfiguration(),
                            logger: Logger) throws {
        try self.init(url: DatabaseURL(url), configuration: configuration, logger: logger)
    }

    /// Creates a pool for a parsed URL.
    public init(url: DatabaseURL, configuration: PoolConfiguration = PoolConfiguration(), logger: Logger) throws {
        try configuration.validate()
        self.url = url
        self.configuration = configuration
        var options = DriverOptions()
        options.sqliteBusyTimeout = configuration.sqliteBusyTimeout
        self.connector = try Drivers.connector(for: url, options: options)
        self.dialect = connector.dialect
        var logger = logger
        logger[metadataKey: "storage.url"] = "\(url)"
        self.logger = logger
        self.state = Mutex(State())
        self.timerQueue = DispatchQueue(label: "switchyard.storage.pool-timers")
        maintain()
        scheduleMaintenance()
    }

    /// A pool dropped without ``close()`` closes its idle connections (so their threads end).
    deinit {
        let idle = state.withLock { s -> [IdleConnection] in
            defer { s.idle.removeAll() }
            return s.idle
        }
        for entry in idle { entry.connection.close() }
        connector.shutdown()
    }

    // MARK: - Public API

    /// A snapshot of the counters.
    public var statistics: PoolStatistics {
        state.withLock { s in
            PoolStatistics(inUse: s.inUse, idle: s.idle.count, waiting: s.waiters.count, connecting: s.connecting,
                           created: s.created, failed: s.failed, closed: s.closedCount, timeouts: s.timeouts,
                           highWater: s.highWater, consecutiveFailures: s.consecutiveFailures,
                           statementTimeouts: s.statementTimeouts, openStreams: s.openStreams)
        }
    }

    /// Runs a statement on some pooled connection.
    public func query(_ sql: String, _ parameters: [SQLValue]) async throws -> SQLResult {
        try await withConnection { try await $0.query(sql, parameters) }
    }

    /// Runs a statement on some pooled connection and calls `completion` on `executor`.
    public func query(_ sql: String, _ parameters: [SQLValue], on executor: any StorageExecutor,
                      completion: @escaping @Sendable (Result<SQLResult, StorageError>) -> Void) {
        query(sql, parameters, timeout: nil, on: executor, completion: completion)
    }

    /// Runs a statement on some pooled connection with a timeout (see ``SQLConnection/query(_:_:timeout:)``):
    /// past it, the statement is cancelled on the server, this throws ``StorageError/timeout(_:)``, and the
    /// connection goes back to the pool healthy. The wait for a connection is bounded by the acquire timeout, not
    /// by `timeout`.
    public func query(_ sql: String, _ parameters: [SQLValue], timeout: Duration?) async throws -> SQLResult {
        do {
            return try await withConnection { try await $0.query(sql, parameters, timeout: timeout) }
        } catch let error as StorageError {
            if error.isStatementTimeout { state.withLock { $0.statementTimeouts += 1 } }
            throw error
        }
    }

    /// Runs a statement with a timeout (as ``query(_:_:timeout:)``) and calls `completion` on `executor`.
    public func query(_ sql: String, _ parameters: [SQLValue], timeout: Duration?, on executor: any StorageExecutor,
                      completion: @escaping @Sendable (Result<SQLResult, StorageError>) -> Void) {
        acquire { [self] result in
            switch result {
            case .failure(let error):
                executor.execute { completion(.failure(error)) }
            case .success(let connection):
                connection.query(sql, parameters, timeout: timeout, on: ImmediateExecutor.shared) { result in
                    if case .failure(let error) = result, error.isStatementTimeout {
                        self.state.withLock { $0.statementTimeouts += 1 }
                    }
                    self.release(connection)
                    executor.execute { completion(result) }
                }
            }
        }
    }

    /// Starts a row stream (see ``SQLConnection/stream(_:_:batchRows:timeout:)``) on a pooled connection, which
    /// the stream holds until it is finished, fails or is cancelled (or released, which cancels it); then the
    /// connection goes back to the pool.
    public func stream(_ sql: String, _ parameters: [SQLValue] = [], batchRows: Int = 1000,
                       timeout: Duration? = nil) async throws -> SQLRowStream {
        try await withCheckedThrowingContinuation { continuation in
            stream(sql, parameters, batchRows: batchRows, timeout: timeout, on: ImmediateExecutor.shared) {
                continuation.resume(with: $0)
            }
        }
    }

    /// Starts a row stream on a pooled connection (as ``stream(_:_:batchRows:timeout:)``) and calls `completion`
    /// on `executor`.
    public func stream(_ sql: String, _ parameters: [SQLValue], batchRows: Int = 1000, timeout: Duration? = nil,
                       on executor: any StorageExecutor,
                       completion: @escaping @Sendable (Result<SQLRowStream, StorageError>) -> Void) {
        acquire { [self] result in
            switch result {
            case .failure(let error):
                executor.execute { completion(.failure(error)) }
            case .success(let connection):
                state.withLock { $0.openStreams += 1 }
                connection.openStream(sql, parameters, batchRows: batchRows, timeout: timeout,
                                      onEnd: { [self] timedOut in
                                          state.withLock { s in
                                              s.openStreams -= 1
                                              if timedOut { s.statementTimeouts += 1 }
                                          }
                                          release(connection)
                                      }) { result in
                    executor.execute { completion(result) }
                }
            }
        }
    }

    /// Lends a connection to `body` and takes it back when `body` returns or throws. Use this to run several
    /// statements on one connection (for example with temporary tables). Throws ``StorageError/timeout(_:)``
    /// when no connection is free within the acquire timeout, ``StorageError/poolClosed(_:)`` after
    /// ``close()``, or what `body` throws.
    public func withConnection<T>(_ body: (SQLConnection) async throws -> T) async throws -> T {
        let connection = try await acquire()
        do {
            let value = try await body(connection)
            release(connection)
            return value
        } catch {
            release(connection)
            throw error
        }
    }

    /// Runs `body` in a transaction on one pooled connection: committed when `body` returns, rolled back when it
    /// throws (and the error rethrown).
    public func transaction<T>(_ body: (SQLConnection) async throws -> T) async throws -> T {
        try await withConnection { connection in try await connection.transaction(body) }
    }

    /// Waits for a connection. Pair with ``release(_:)``; prefer ``withConnection(_:)``.
    public func acquire() async throws -> SQLConnection {
        try await withCheckedThrowingContinuation { continuation in
            acquire { continuation.resume(with: $0) }
        }
    }

    /// Waits for a connection and calls `completion` on `executor`. The receiver must call ``release(_:)``
    /// exactly once when done.
    public func acquire(on executor: any StorageExecutor,
                        completion: @escaping @Sendable (Result<SQLConnection, StorageError>) -> Void) {
        acquire { result in executor.execute { completion(result) } }
    }

    /// Gives back a connection that ``acquire()`` or ``acquire(on:completion:)`` of this pool handed out, exactly
    /// once. A broken connection is closed and replaced on demand.
    public func release(_ connection: SQLConnection) {
        let now = ContinuousClock.now
        let actions = state.withLock { s -> [Action] in
            s.inUse -= 1
            var actions: [Action] = []
            if s.isClosed || connection.isBroken {
                s.closedCount += 1
                actions.append(.close(connection))
                if connection.isBroken && !s.isClosed {
                    s.suspectBefore = now
                    actions += serveWaiters(&s, now: now)
                }
            } else if !s.waiters.isEmpty {
                let waiter = s.waiters.removeFirst()
                s.inUse += 1
                actions.append(.deliver(waiter.deliver, .success(connection)))
            } else {
                s.idle.append(IdleConnection(connection: connection, since: now))
            }
            return actions
        }
        if connection.isBroken {
            logger.info("storage connection dropped: broken", metadata: ["connection.id": "\(connection.id)"])
        }
        perform(actions)
    }

    /// Closes the pool: waiters get ``StorageError/poolClosed(_:)``, idle connections are closed now and
    /// connections in use when they are released. Returns once the idle ones are closed.
    public func close() async {
        let (idle, waiters) = state.withLock { s -> ([IdleConnection], [Waiter]) in
            guard !s.isClosed else { return ([], []) }
            s.isClosed = true
            let idle = s.idle
            let waiters = s.waiters
            s.closedCount += idle.count
            s.idle.removeAll()
            s.waiters.removeAll()
            return (idle, waiters)
        }
        for waiter in waiters {
            waiter.deliver(.failure(.poolClosed(.init("the pool was closed"))))
        }
        for entry in idle {
            await entry.connection.close()
        }
        connector.shutdown()
    }

    // MARK: - Internals

    /// Whether the pool's connections can run statements driven by an event loop
    /// (``stream(_:_:firstBatch:batchRows:timeout:drivenBy:completion:)``).
    var connectorDrivesOnLoop: Bool {
        #if PostgreSQL
        return connector is PostgresConnector
        #else
        return false
        #endif
    }

    /// Counts a statement its timeout cancelled (the loop-driven path).
    func noteStatementTimeout() { state.withLock { $0.statementTimeouts += 1 } }

    /// Counts a row stream opened on a held connection (the loop-driven path hands its rest to one).
    func noteStreamOpened() { state.withLock { $0.openStreams += 1 } }

    /// Counts the end of a stream of ``noteStreamOpened()``.
    func noteStreamEnded(timedOut: Bool) {
        state.withLock { s in
            s.openStreams -= 1
            if timedOut { s.statementTimeouts += 1 }
        }
    }

    /// Finds or opens a connection for `deliver`, which is called exactly once.
    func acquire(deadline: ContinuousClock.Instant? = nil, _ deliver: @escaping Delivery) {
        let now = ContinuousClock.now
        let deadline = deadline ?? now.advanced(by: configuration.acquireTimeout)
        let actions = state.withLock { s -> [Action] in
            if s.isClosed {
                return [.deliver(deliver, .failure(.poolClosed(.init("the pool is closed"))))]
            }
            if let entry = s.idle.popLast() {
                s.inUse += 1
                if needsCheck(entry, now: now, state: s) {
                    return [.check(entry.connection, deadline, deliver)]
                }
                return [.deliver(deliver, .success(entry.connection))]
            }
            let id = s.nextWaiterID
            s.nextWaiterID += 1
            s.waiters.append(Waiter(id: id, deadline: deadline, deliver: deliver))
            var actions = serveWaiters(&s, now: now)
            if s.waiters.contains(where: { $0.id == id }), s.waiterTimer.map({ deadline < $0 }) ?? true {
                s.waiterTimer = deadline
                actions.append(.scheduleTimeout(deadline))
            }
            return actions
        }
        perform(actions)
    }

    /// Starts connects for waiters while below the maximum, or fails them fast during a backoff when no
    /// connection is on its way.
    private func serveWaiters(_ s: inout State, now: ContinuousClock.Instant) -> [Action] {
        guard !s.waiters.isEmpty else { return [] }
        if let until = s.backoffUntil, until > now {
            guard s.inUse + s.connecting == 0 else { return [] }
            let error = backoffError(s, now: now, until: until)
            let waiters = s.waiters
            s.waiters.removeAll()
            return waiters.map { .deliver($0.deliver, .failure(error)) }
        }
        let wanted = min(s.waiters.count - s.connecting, configuration.maxConnections - s.open)
        guard wanted > 0 else { return [] }
        s.connecting += wanted
        s.noteOpen()
        return [.connect(wanted)]
    }

    private func backoffError(_ s: State, now: ContinuousClock.Instant, until: ContinuousClock.Instant)
        -> StorageError
    {
        let last = s.lastConnectError?.detail ?? .init("connect failed")
        let wait = (until - now).millisecondsRoundedUp
        var detail = last
        detail.message = "database unreachable (\(s.consecutiveFailures) failed attempts, next in \(wait) ms): "
            + last.message
        if case .authenticationFailed = s.lastConnectError { return .authenticationFailed(detail) }
        return .connectionFailed(detail)
    }

    private func needsCheck(_ entry: IdleConnection, now: ContinuousClock.Instant, state s: State) -> Bool {
        if let suspect = s.suspectBefore, entry.since <= suspect { return true }
        return now - entry.since >= configuration.healthCheckAfterIdle
    }

    private func perform(_ actions: [Action]) {
        for action in actions {
            switch action {
            case .deliver(let deliver, let result):
                deliver(result)
            case .connect(let count):
                for _ in 0..<count { startConnect() }
            case .check(let connection, let deadline, let deliver):
                connection.ping { [self] ok in
                    if ok {
                        deliver(.success(connection))
                    } else {
                        logger.info("storage connection failed its health check",
                                    metadata: ["connection.id": "\(connection.id)"])
                        connection.markBroken()
                        release(connection)
                        acquire(deadline: deadline, deliver)
                    }
                }
            case .close(let connection):
                connection.close()
            case .scheduleTimeout(let deadline):
                let delay = (deadline - ContinuousClock.now).millisecondsRoundedUp
                timerQueue.asyncAfter(deadline: .now() + .milliseconds(Int(delay))) { [weak self] in
                    self?.timeOutWaiters()
                }
            }
        }
    }

    private func startConnect() {
        SQLConnection.open(connector: connector, timeout: configuration.connectTimeout) { [self] result in
            connectFinished(result)
        }
    }

    private func connectFinished(_ result: Result<SQLConnection, StorageError>) {
        let now = ContinuousClock.now
        var recovered = 0
        let actions = state.withLock { s -> [Action] in
            s.connecting -= 1
            switch result {
            case .success(let connection):
                s.created += 1
                recovered = s.consecutiveFailures
                s.consecutiveFailures = 0
                s.backoffUntil = nil
                if s.isClosed {
                    s.closedCount += 1
                    return [.close(connection)]
                }
                if !s.waiters.isEmpty {
                    let waiter = s.waiters.removeFirst()
                    s.inUse += 1
                    return [.deliver(waiter.deliver, .success(connection))]
                }
                s.idle.append(IdleConnection(connection: connection, since: now))
                return []
            case .failure(let error):
                s.failed += 1
                s.consecutiveFailures += 1
                s.lastConnectError = error
                let exponent = min(s.consecutiveFailures - 1, 20)
                let backoff = min(configuration.reconnectBackoff * (1 << exponent), configuration.maxReconnectBackoff)
                s.backoffUntil = now.advanced(by: backoff)
                guard !s.waiters.isEmpty else { return [] }
                // The oldest waiter gets this attempt's error; the rest too when nothing else is on its way.
                var failing = 1
                if s.inUse + s.connecting == 0 { failing = s.waiters.count }
                let failed = s.waiters.prefix(failing)
                s.waiters.removeFirst(failing)
                return failed.map { .deliver($0.deliver, .failure(error)) }
            }
        }
        switch result {
        case .success(let connection):
            if recovered > 0 {
                logger.info("storage reconnected", metadata: ["storage.failedAttempts": "\(recovered)"])
            }
            logger.debug("storage connection opened", metadata: ["connection.id": "\(connection.id)"])
        case .failure(let error):
            logger.info("storage connect failed", metadata: ["storage.error": "\(error)"])
        }
        perform(actions)
    }

    /// Timer queue: the waiters past their deadline get a timeout; the timer is armed again for the earliest left.
    private func timeOutWaiters() {
        let now = ContinuousClock.now
        let (expired, rearm, error) = state.withLock { s -> ([Waiter], ContinuousClock.Instant?, StorageError) in
            s.waiterTimer = nil
            var expired: [Waiter] = []
            var earliest: ContinuousClock.Instant?
            s.waiters.removeAll { waiter in
                if waiter.deadline <= now {
                    expired.append(waiter)
                    return true
                }
                if earliest.map({ waiter.deadline < $0 }) ?? true { earliest = waiter.deadline }
                return false
            }
            s.timeouts += expired.count
            s.waiterTimer = earliest
            let error = StorageError.timeout(.init(
                "no connection free within \(configuration.acquireTimeout) (pool max \(configuration.maxConnections), "
                    + "in use \(s.inUse), connecting \(s.connecting), waiting \(s.waiters.count))"))
            return (expired, earliest, error)
        }
        var actions = expired.map { Action.deliver($0.deliver, .failure(error)) }
        if let rearm { actions.append(.scheduleTimeout(rearm)) }
        perform(actions)
    }

    /// Runs ``maintain()`` every maintenance interval until the pool is closed or released.
    private func scheduleMaintenance() {
        let interval = max(1, configuration.maintenanceInterval.millisecondsRoundedUp)
        timerQueue.asyncAfter(deadline: .now() + .milliseconds(Int(interval))) { [weak self] in
            guard let self, !self.state.withLock({ $0.isClosed }) else { return }
            self.maintain()
            self.scheduleMaintenance()
        }
    }

    /// Closes idle connections past the idle timeout and refills the minimum. Runs on the timer queue.
    private func maintain() {
        let now = ContinuousClock.now
        let actions = state.withLock { s -> [Action] in
            guard !s.isClosed else { return [] }
            var actions: [Action] = []
            // Oldest idle first (the front of the array); keep minConnections.
            while s.open > configuration.minConnections, let first = s.idle.first,
                now - first.since >= configuration.idleTimeout
            {
                s.idle.removeFirst()
                s.closedCount += 1
                actions.append(.close(first.connection))
            }
            let inBackoff = s.backoffUntil.map { $0 > now } ?? false
            if !inBackoff {
                let missing = configuration.minConnections - s.open
                if missing > 0 {
                    s.connecting += missing
                    s.noteOpen()
                    actions.append(.connect(missing))
                }
                actions += serveWaiters(&s, now: now)
            }
            return actions
        }
        perform(actions)
    }
}

/// Runs work inline. Used inside the pool where the continuation only hands results on.
final class ImmediateExecutor: StorageExecutor {
    static let shared = ImmediateExecutor()
    func execute(_ work: @escaping @Sendable () -> Void) { work() }
}
