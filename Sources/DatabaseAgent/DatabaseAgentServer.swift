import LarsWire
import Logging
import Messaging
import Reactor
import ServiceLifecycle
import Storage
import SwiftProtobuf
import SwitchyardCore
import Synchronization

/// The database agent (the seed's mysqlAgent): one service owns the pool and the drivers, and every other service
/// reaches the database through it over our frames (ids 300+, ``DatabaseAgentMessageID``, Protos/dbagent.proto),
/// with no database library of its own.
///
///     caller --Execute/Batch (token, name or SQL, typed parameters)--> agent: checks (AccessRules, rate, bounds)
///        <--Columns, Rows chunk-- (waits for MoreRows before reading the next batch) ... <--Done / Error--
///
/// Callers present a token of the access file (``AccessFile``) with every request; it says which named statements
/// they may run, whether they may send SQL text, how many rows an answer may hold and how many requests a second
/// they may make. Requests without a valid token are refused, logged once per episode across the connections, and
/// the connection is closed at ``DatabaseAgentConfiguration/maxAuthFailures``.
///
/// Threads: the requests of a connection live on its loop (``AgentRequestCore``, a pure state machine); statements
/// run through the runner: a select on PostgreSQL is driven by that loop itself (non-blocking libpq, nothing blocks),
/// the rest on the pool's worker threads or in tasks, whose results come back to the loop.
///
/// A `Service`: ``run()`` binds (unless ``start()`` did) and serves until graceful shutdown, then stops accepting and
/// closes the connections (their requests released). Put it in a `ServiceGroup` after its pool and loop group.
public final class DatabaseAgentServer: Service, Sendable {
    public let configuration: DatabaseAgentConfiguration
    public let rules: AccessRules
    let runner: any StatementRunner
    let framed: FramedServer
    let counters: AgentCounters
    let limiter: TokenRateLimiter
    private let logger: Logger
    private let running = Atomic<Bool>(false)
    private let bound = Mutex<SocketAddress?>(nil)

    /// - Parameters:
    ///   - group: The loops of the callers' connections.
    ///   - configuration: Address and bounds (checked by ``start()``).
    ///   - rules: The access file's statements and tokens.
    ///   - pool: The database; the agent runs every statement on it.
    ///   - logger: Start, stop, refused callers (once per connection) and protocol errors; nothing per request.
    public convenience init(group: EventLoopGroup, configuration: DatabaseAgentConfiguration = .init(),
                            rules: AccessRules, pool: ConnectionPool, logger: Logger) {
        self.init(group: group, configuration: configuration, rules: rules, runner: PoolStatementRunner(pool: pool),
                  logger: logger)
    }

    init(group: EventLoopGroup, configuration: DatabaseAgentConfiguration, rules: AccessRules,
         runner: any StatementRunner, logger: Logger) {
        self.configuration = configuration
        self.rules = rules
        self.runner = runner
        self.logger = logger
        let counters = AgentCounters(tokenLabels: rules.tokens.map(\.label))
        self.counters = counters
        let limiter = TokenRateLimiter(rates: rules.tokens.map(\.rate))
        self.limiter = limiter
        let limits = AgentRequestCore.Limits(configuration)
        let authLog = UnauthorizedLog(logger: logger, quietInterval: configuration.logQuietInterval)
        let router = MessageRouter<TCPConnection>()
        do {
            /// A route to a method of the connection's `AgentConnection`.
            func route<M: SwiftProtobuf.Message>(
                _ id: DatabaseAgentMessageID, _ method: @escaping @Sendable (AgentConnection) -> (M) -> Void
            ) throws {
                try router.on(id) { (request: M, connection: TCPConnection) in
                    if let agent = AgentConnection.of(connection) { method(agent)(request) }
                }
            }
            try route(.execute, AgentConnection.execute)
            try route(.batch, AgentConnection.batch)
            try route(.cancel, AgentConnection.cancel)
            try route(.moreRows, AgentConnection.moreRows)
            try route(.hello, AgentConnection.hello)
            try route(.transaction, AgentConnection.transaction)
        } catch {
            preconditionFailure("database agent routes: \(error)")
        }
        framed = FramedServer(
            group: group,
            configuration: FramedServerConfiguration(server: configuration.server,
                                                     maxBodyLength: configuration.maxFrameBodyLength,
                                                     idleTimeout: configuration.idleTimeout),
            router: router, logger: logger,
            onConnect: { connection in
                var core = AgentRequestCore(rules: rules, limits: limits, limiter: limiter, counters: counters)
                core.dialect = runner.dialectName
                let state = AgentConnection(connection: connection, core: core, runner: runner,
                                            counters: counters, authLog: authLog)
                connection.context = state
                state.startTimer(every: configuration.creditTimeout.map { min($0 / 4, .seconds(1)) })
            },
            onClose: { connection in AgentConnection.of(connection)?.closed() })
    }

    /// Checks the configuration, binds and starts accepting; returns the bound address. Idempotent. Not on a loop.
    @discardableResult
    public func start() throws -> SocketAddress {
        if let address = bound.withLock({ $0 }) { return address }
        try configuration.validate()
        let address = try framed.start()
        bound.withLock { $0 = address }
        logger.info("database agent listening", metadata: [
            "local.address": "\(address)", "statements.count": "\(rules.statements.count)",
            "tokens.count": "\(rules.tokens.count)",
        ])
        return address
    }

    /// Serves until graceful shutdown or cancellation, then ``shutdown()``.
    public func run() async throws {
        if running.exchange(true, ordering: .acquiringAndReleasing) { throw DatabaseAgentError.alreadyRunning }
        if bound.withLock({ $0 }) == nil {
            _ = try await runOnDedicatedThread(name: "sy-dbagent-bind") { [self] in Result { try start() } }.get()
        }
        try? await gracefulShutdown()
        await runOnDedicatedThread(name: "sy-dbagent-stop") { [self] in shutdown() }
    }

    /// Stops accepting and closes every connection (flushing, bounded); open requests are released. Blocks; not on a
    /// loop thread.
    public func shutdown() {
        framed.shutdown(timeout: .seconds(2))
        logger.info("database agent stopped")
    }

    /// The bound address once started.
    public var localAddress: SocketAddress? { framed.localAddress }
    /// Open connections.
    public var connectionCount: Int { framed.connectionCount }
    /// The agent's counters (per token, refusals, rows read).
    public var statistics: DatabaseAgentStatistics { counters.snapshot }
    /// Frame-level counters (protocol errors, idle closes).
    public var frameStatistics: FrameStatistics { framed.statistics }
}

/// Errors of the agent's lifecycle.
public enum DatabaseAgentError: Error, Equatable, Sendable, CustomStringConvertible {
    /// `run()` while another `run()` serves.
    case alreadyRunning

    public var description: String { "the database agent is running already" }
}

/// Connections whose requests carry no valid token, across the agent's connections: one line when an episode starts
/// (the first such connection after the quiet interval without one), one with the count when the next starts, so a
/// flood of bad callers costs a line per episode, not one per connection.
final class UnauthorizedLog: Sendable {
    let logger: Logger
    private let episode: Mutex<LogEpisode>

    init(logger: Logger, quietInterval: Duration) {
        self.logger = logger
        episode = Mutex(LogEpisode(quietInterval: quietInterval))
    }

    /// A connection sent its first request without a valid token. Any thread.
    func record(_ connection: TCPConnection, reason: String) {
        guard case .started(let ended) = episode.withLock({ $0.record(now: SystemInfo.monotonicNanoseconds()) })
        else { return }
        if ended > 0 {
            logger.info("database agent: connections without a valid token: episode over",
                        metadata: ["count": "\(ended)"])
        }
        logger.info("database agent: request without a valid token (logged once per episode)", metadata: [
            "peer.address": "\(connection.peerAddress)", "connection.id": "\(connection.id)", "reason": "\(reason)",
        ])
    }
}

/// One caller's connection: its request core and the work in progress. Loop-confined: every method runs on the
/// connection's loop, and the tasks that run statements come back to it with `loop.execute`.
final class AgentConnection: @unchecked Sendable {  // used on its connection's loop only (tasks hop back to it)
    let connection: TCPConnection
    var core: AgentRequestCore
    let runner: any StatementRunner
    let counters: AgentCounters
    let authLog: UnauthorizedLog
    /// The connection's transaction across requests (AgentTransactions.swift).
    var pin = TransactionPin.none
    /// Work of the runner in progress (a task, for runners without a callback form and for statements inside a
    /// transaction), cancelled with its request.
    var tasks: [UInt64: any RunnerWork] = [:]
    private var sources: [UInt64: any RowSource] = [:]
    /// Statement timeouts of the requests still starting (loop timers: no task per request).
    private var deadlines: [UInt64: TimerHandle] = [:]
    private var timer: TimerHandle?
    /// The frames of one ``perform(_:)``, written at its end in one send (a select's Columns, Rows and Done leave in
    /// one segment, and its caller wakes once); the capacity is kept for the next.
    private var outgoing: [UInt8] = []
    /// The answers being queued now are written by a task of the loop (``coalescingWrites(_:)``).
    private var coalescing = false
    /// That task is posted.
    private var flushScheduled = false

    init(connection: TCPConnection, core: AgentRequestCore, runner: any StatementRunner, counters: AgentCounters,
         authLog: UnauthorizedLog) {
        self.connection = connection
        self.core = core
        self.runner = runner
        self.counters = counters
        self.authLog = authLog
    }

    static func of(_ connection: TCPConnection) -> AgentConnection? { connection.context as? AgentConnection }

    private var now: UInt64 { connection.loop.wakeTime }

    func startTimer(every period: Duration?) {
        guard let period else { return }
        timer = connection.loop.scheduleRepeating(every: period) { [weak self] in
            guard let self else { return }
            perform(core.tick(now: SystemInfo.monotonicNanoseconds()))
        }
    }

    func execute(_ request: Switchyard_Dbagent_Execute) { perform(core.execute(request, now: now)) }
    func batch(_ request: Switchyard_Dbagent_Batch) { perform(core.batch(request, now: now)) }
    func cancel(_ request: Switchyard_Dbagent_Cancel) { perform(core.cancel(request.requestID)) }
    func moreRows(_ request: Switchyard_Dbagent_MoreRows) { perform(core.moreRows(request.requestID)) }
    func hello(_ request: Switchyard_Dbagent_Hello) { perform(core.hello(request, now: now)) }
    func transaction(_ request: Switchyard_Dbagent_Transaction) { perform(core.transaction(request, now: now)) }

    /// The connection closed: its requests are released, and the connection lets go of this state (which holds the
    /// connection: a cycle otherwise). Tasks still running keep it until they come back and find nothing open.
    func closed() {
        timer?.cancel()
        timer = nil
        perform(core.closed())
        rollBackOnClose()
        connection.context = nil
    }

    func perform(_ actions: [AgentRequestCore.Action]) {
        defer { flush() }
        for action in actions {
            switch action {
            case .send(let answer, let token):
                send(answer, token: token)
            case .run(let id, let sql, let parameters, let timeout, let batchRows, _):
                let session: (any TransactionSession)?
                switch statementTarget() {
                case .failure(let refusal):
                    failed(id, refusal)
                    continue
                case .success(let target): session = target
                }
                armTimeout(id, timeout)
                if let session {
                    // Inside a transaction: on the pinned connection, through its session.
                    tasks[id] = Task { [self] in
                        do {
                            let source = try await session.run(sql, parameters, timeout: timeout)
                            do {
                                let batch = try await source.nextBatch(maxRows: batchRows)
                                connection.loop.execute { self.started(id, source, batch) }
                            } catch {
                                source.cancel()
                                connection.loop.execute { self.failed(id, error) }
                            }
                        } catch {
                            connection.loop.execute { self.failed(id, error) }
                        }
                    }
                    continue
                }
                // The runner reports on this loop (a statement it drives here) or on its own thread (the pool's
                // worker): then one hop back here.
                let work = runner.start(sql, parameters, timeout: timeout, firstBatch: batchRows,
                                        loop: connection.loop) { [self] result in
                    let report: @Sendable () -> Void = {
                        switch result {
                        case .success(let started): self.started(id, started.source, started.batch)
                        case .failure(let error): self.failed(id, error)
                        }
                    }
                    if connection.loop.inLoopThread {
                        // Reported by a handler of this loop (the database's socket): the answers of every
                        // statement that ends in this round of events leave in one write.
                        self.coalescingWrites(report)
                    } else {
                        connection.loop.execute(report)
                    }
                }
                if let work { tasks[id] = work }
            case .runBatch(let id, let statements, let timeout, _):
                guard case .none = pin else {
                    failed(id, TransactionRefusal(kind: .transaction, message:
                        "a batch cannot run inside a transaction: send its statements as Execute"))
                    continue
                }
                armTimeout(id, timeout)
                let runner = runner
                let all = statements.map { (sql: $0.sql, parameters: $0.parameters) }
                tasks[id] = Task { [self] in
                    do {
                        let outcome = try await runner.runBatch(all, timeout: timeout)
                        connection.loop.execute {
                            self.deadlines.removeValue(forKey: id)?.cancel()
                            self.perform(self.core.batchFinished(id, outcome))
                        }
                    } catch {
                        connection.loop.execute { self.failed(id, error) }
                    }
                }
            case .transaction(let id, let action, let timeout, _):
                runTransaction(id, action, timeout: timeout)
            case .fetch(let id, let maxRows):
                guard let source = sources[id] else { continue }
                let work = source.nextBatch(maxRows: maxRows) { [self] result in
                    connection.loop.execute {
                        switch result {
                        case .success(let batch):
                            self.tasks[id] = nil
                            self.perform(self.core.batchReady(id, batch, now: self.now))
                        case .failure(let error):
                            self.failed(id, error)
                        }
                    }
                }
                if let work { tasks[id] = work }
            case .release(let id):
                deadlines.removeValue(forKey: id)?.cancel()
                tasks.removeValue(forKey: id)?.cancel()
                sources.removeValue(forKey: id)?.cancel()
            case .expire(let id):
                deadlines.removeValue(forKey: id)?.cancel()
                tasks.removeValue(forKey: id)?.expire()
                sources.removeValue(forKey: id)?.cancel()
            case .logUnauthorized(let reason):
                authLog.record(connection, reason: reason)
            case .close:
                flushNow()
                counters.authClosed.add()
                connection.close()
            }
        }
    }

    /// Answers `TIMEOUT` when the request is still starting after `timeout`.
    private func armTimeout(_ id: UInt64, _ timeout: Duration) {
        deadlines[id] = connection.loop.schedule(after: timeout) { [weak self] in
            guard let self else { return }
            deadlines[id] = nil
            perform(core.timedOut(id))
        }
    }

    private func started(_ id: UInt64, _ source: any RowSource, _ batch: RowBatch) {
        deadlines.removeValue(forKey: id)?.cancel()
        tasks[id] = nil
        sources[id] = source
        perform(core.started(id, columns: source.columns, batch: batch, now: now))
    }

    func failed(_ id: UInt64, _ error: any Error) {
        deadlines.removeValue(forKey: id)?.cancel()
        tasks[id] = nil
        perform(core.failed(id, error, now: now))
    }

    /// Sends an answer (the core counted it).
    private func send(_ answer: AgentRequestCore.Answer, token: Int?) {
        // Encoded per case, so each message type's encoder is specialized (not through `any Message`).
        func encoded<M: SwiftProtobuf.Message>(_ id: DatabaseAgentMessageID, _ m: M)
            -> (DatabaseAgentMessageID, [UInt8]?)
        {
            (id, try? m.serializedBytes())
        }
        let (id, body) = switch answer {
        case .columns(let m): encoded(.columns, m)
        case .rows(let m): encoded(.rows, m)
        case .done(let m): encoded(.done, m)
        case .error(let m): encoded(.error, m)
        case .welcome(let m): encoded(.welcome, m)
        }
        guard let body else { return }
        var header = FrameParser.header(messageID: id.rawValue, bodyLength: body.count)
        withUnsafeBytes(of: &header) { outgoing.append(contentsOf: $0) }
        outgoing.append(contentsOf: body)
    }

    /// Runs `body` with its answers' write put off to a task of this loop (after the handlers of the events at hand,
    /// whose answers join it). Only from a handler: a task posted from a task wakes the loop.
    private func coalescingWrites(_ body: () -> Void) {
        coalescing = true
        body()
        coalescing = false
        guard !outgoing.isEmpty, !flushScheduled else { return }
        flushScheduled = true
        connection.loop.execute { [self] in
            flushScheduled = false
            flush()
        }
    }

    /// Writes the frames queued by ``send(_:token:)`` in one send (later, while ``coalescingWrites(_:)`` runs).
    private func flush() {
        guard !coalescing else { return }
        flushNow()
    }

    private func flushNow() {
        guard !outgoing.isEmpty else { return }
        _ = outgoing.withUnsafeBytes { connection.sendInLoop($0) }
        outgoing.removeAll(keepingCapacity: outgoing.capacity <= 64 << 10)
    }
}
