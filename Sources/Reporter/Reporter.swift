#if canImport(Glibc)
import Glibc
#endif
import LarsProtocol
import Logging
import Messaging
import Metrics
import Reactor
import ServiceLifecycle
import Storage
import SwitchyardCore
import Synchronization

/// The reporter: agents send ReportStatusRequest (id 3, no reply) with per-host call results; the reporter upserts
/// them into ServerCallStatus, one row per (modid, cmdid, ip, port, caller), overwriting succ_cnt, err_cnt, ts and
/// overload. Lars's semantics (PROTOCOL.md, call reports): a report carries each host's running counts in its
/// current window, so the row holds the latest report, and a write tried again changes nothing.
///
///     loop: decode -> ReporterIntake -> BatchWriter (bounded in reports and bytes) -> its writer: every
///     flushInterval, or at once when batchRows rows wait, one transaction of upserts through the pool
///     (more than maxReportResults results: refused; the queue full: the connection is paused, push back;
///     a row the database refuses: the batch is written row by row, the others kept, that one logged and counted)
///
/// The loops only take the writer's short lock to enqueue; all database work runs in the writer through the pool's
/// async API. The ServerCallStatus table must exist (`RouteSchema.create`).
///
/// A `Service`: ``run()`` binds (unless ``start()`` did) and runs the writer as a child task; on graceful shutdown it
/// stops accepting, then writes what is queued, the reports waiting on paused connections included (at most
/// ``ReporterConfiguration/drainTimeout``), logs how many it could not write, and returns. On cancellation it stops
/// at once. Safe to call from any thread.
public final class Reporter: Service, Sendable {
    /// The settings.
    public let configuration: ReporterConfiguration
    private let server: FramedServer
    private let writer: BatchWriter<[Row]>
    private let intake: ReporterIntake
    private let refusedRows: RefusedRows
    private let logger: Logger
    private let metrics: Metrics
    private let running = Atomic<Bool>(false)

    /// swift-metrics instruments (no-ops until the executable bootstraps a backend).
    struct Metrics: Sendable {
        static let dimensions = [("service", "reporter")]
        let received = Counter(label: "switchyard_reporter_received_total", dimensions: dimensions)
        let written = Counter(label: "switchyard_reporter_written_total", dimensions: dimensions)
        let dropped = Counter(label: "switchyard_reporter_dropped_total", dimensions: dimensions)
        let refused = Counter(label: "switchyard_reporter_refused_total", dimensions: dimensions)
        let paused = Counter(label: "switchyard_reporter_paused_total", dimensions: dimensions)
        let rowsRefused = Counter(label: "switchyard_reporter_rows_refused_total", dimensions: dimensions)
        let failed = Counter(label: "switchyard_reporter_failed_total", dimensions: dimensions)
        let unwritten = Counter(label: "switchyard_reporter_unwritten_at_shutdown_total", dimensions: dimensions)
        let queued = Gauge(label: "switchyard_reporter_queued", dimensions: dimensions)
        let queuedBytes = Gauge(label: "switchyard_reporter_queued_bytes", dimensions: dimensions)
    }

    /// Creates the reporter; nothing is bound until ``start()`` or ``run()``.
    ///
    /// - Parameters:
    ///   - group: The loops that serve the agent connections.
    ///   - configuration: Address, port, queue and batch sizes (see ``ReporterConfiguration/validate()``;
    ///     ``run()`` throws when it is out of range).
    ///   - pool: The database with the ServerCallStatus table.
    ///   - logger: Where the reporter logs start, stop, drops and write failures (once per episode; info and below).
    public init(group: EventLoopGroup, configuration: ReporterConfiguration, pool: ConnectionPool, logger: Logger) {
        self.configuration = configuration
        self.logger = logger
        let metrics = Metrics()
        self.metrics = metrics
        let dialect = pool.dialect
        let fullUpsert = Reporter.upsertStatement(dialect, rows: Reporter.rowsPerStatement)
        let failing = Atomic<Bool>(false)
        let losing = Atomic<Bool>(false)
        let refusedRows = RefusedRows(logger: logger, counter: metrics.rowsRefused)
        self.refusedRows = refusedRows
        let writer = BatchWriter<[Row]>(
            configuration: configuration.writerConfiguration, label: "reporter", logger: logger,
            cost: { ReporterConfiguration.queuedBytes(results: $0.count) },
            observe: { event, statistics in
                switch event {
                case .dropped(let count):
                    metrics.dropped.increment(by: count)
                case .written(let count):
                    metrics.written.increment(by: count)
                    losing.store(false, ordering: .relaxed)
                    if failing.exchange(false, ordering: .relaxed) {
                        logger.info("reporter: database writes work again")
                    }
                case .writeFailed(let count, let error, let willRetry):
                    // One line when writes start failing, one more when a batch's retries are used up.
                    if willRetry {
                        if !failing.exchange(true, ordering: .relaxed) {
                            logger.info("reporter: database write failed; trying again",
                                        metadata: ["error.description": "\(error)"])
                        }
                    } else {
                        metrics.failed.increment(by: count)
                        failing.store(true, ordering: .relaxed)
                        if !losing.exchange(true, ordering: .relaxed) {
                            logger.info("reporter: database write failed; reports are lost until it works again",
                                        metadata: ["error.description": "\(error)"])
                        }
                    }
                }
                metrics.queued.record(statistics.queued)
                metrics.queuedBytes.record(statistics.queuedCost)
            },
            write: { reports in
                try await Reporter.write(Reporter.merge(reports.flatMap { $0 }), dialect, fullUpsert, on: pool,
                                         refused: refusedRows.record)
            })
        self.writer = writer
        let intake = ReporterIntake(writer: writer, maxResults: configuration.maxReportResults, logger: logger,
                                    metrics: metrics)
        self.intake = intake
        let router = MessageRouter<TCPConnection>()
        // Cannot throw: a fresh router with one route.
        try! router.on(MessageID.reportStatusRequest, as: Lars_ReportStatusRequest.self) { request, message in
            guard intake.admit(results: request.results.count, from: message.connection) else { return }
            intake.accept(Reporter.rows(of: request, now: UInt32(truncatingIfNeeded: time(nil))),
                          on: message.connection)
        }
        server = FramedServer(
            group: group,
            configuration: FramedServerConfiguration(server: ServerConfiguration(
                host: configuration.host, port: configuration.port, maxConnections: configuration.maxConnections)),
            router: router, logger: logger)
    }

    /// Binds and starts accepting reports (queued until ``run()`` writes them); returns the bound address. Lets a
    /// caller learn the address (port 0), or that the port is taken, before ``run()``. Idempotent: a second call
    /// returns the address. Throws ``ReporterError/invalidConfiguration(_:)`` or the bind error. Blocks briefly
    /// (until the acceptor loop listens); not on a loop thread.
    @discardableResult
    public func start() throws -> SocketAddress {
        if let address = server.localAddress { return address }
        try configuration.validate()
        let address = try server.start()
        logger.info("reporter listening", metadata: ["local.address": "\(address)"])
        return address
    }

    /// Runs the reporter until graceful shutdown or cancellation (see ``Reporter``); binds unless ``start()`` did.
    /// Throws the error of ``start()``, or ``ReporterError/alreadyRunning``.
    public func run() async throws {
        if running.exchange(true, ordering: .acquiringAndReleasing) { throw ReporterError.alreadyRunning }
        if server.localAddress == nil {
            _ = try await runOnDedicatedThread(name: "sy-rep-bind") { [self] in Result { try start() } }.get()
        }
        let (writer, server, intake) = (self.writer, self.server, self.intake)
        let drainTimeout = configuration.drainTimeout
        await withTaskGroup(of: Void.self) { tasks in
            tasks.addTask { await writer.run() }
            try? await gracefulShutdown()
            // Graceful: no more reports come in once the server has stopped; the reports parked on paused
            // connections go into the queue as the writer makes room; then what is queued is written, all within
            // the drain timeout. Cancelled: the writer child is cancelled with this task and stops at once.
            await runOnDedicatedThread(name: "sy-rep-stop") { server.shutdown() }
            let deadline = ContinuousClock.now.advanced(by: drainTimeout)
            // Polled: this runs once, at shutdown, and only while reports are parked.
            while intake.parked > 0 && ContinuousClock.now < deadline && !Task.isCancelled {
                try? await Task.sleep(for: .milliseconds(5))
            }
            writer.finish(deadline: deadline)
        }
        let unwritten = writer.statistics.queued + intake.parked
        if unwritten > 0 {
            metrics.unwritten.increment(by: unwritten)
            logger.info("reporter stopped; reports could not be written before the drain timeout", metadata: [
                "reporter.unwritten": "\(unwritten)", "reporter.drain_timeout": "\(drainTimeout)",
            ])
        } else {
            logger.info("reporter stopped")
        }
    }

    /// The bound address once bound.
    public var localAddress: SocketAddress? { server.localAddress }

    /// The counters.
    public var statistics: ReporterStatistics {
        let s = writer.statistics
        return ReporterStatistics(received: intake.receivedReports, written: s.written, dropped: s.dropped,
                                  refused: intake.refused, pauses: intake.pauses, failedWrites: s.failedWrites,
                                  failedReports: s.failed, queued: s.queued + intake.parked,
                                  queuedBytes: s.queuedCost, peakQueuedBytes: s.peakQueuedCost,
                                  rowsRefused: refusedRows.count)
    }

    /// One ServerCallStatus row to write.
    struct Row: Sendable, Hashable {
        struct Key: Sendable, Hashable {
            var modid: Int32
            var cmdid: Int32
            var ip: UInt32
            var port: Int32
            /// Lars's caller: the agent machine's IPv4 address, the bits of the int32 field read unsigned.
            var caller: UInt32
        }
        var key: Key
        var succ: UInt32
        var err: UInt32
        var ts: UInt32
        var overload: Bool

        /// The statement's nine parameters. ip, port and caller are written unsigned (Lars's columns are
        /// `int unsigned`); the counts are capped at Int32.max (Lars's `succ_cnt` and `err_cnt` are signed `int`).
        var parameters: [SQLValue] {
            [SQLValue(key.modid), SQLValue(key.cmdid), .integer(Int64(key.ip)), SQLValue(key.port),
             .integer(Int64(key.caller)), .integer(Int64(min(succ, UInt32(Int32.max)))),
             .integer(Int64(min(err, UInt32(Int32.max)))), .integer(Int64(ts)), SQLValue(overload)]
        }
    }

    /// The rows of one report (results with a port out of range are skipped).
    static func rows(of report: Lars_ReportStatusRequest, now: UInt32) -> [Row] {
        let ts = report.ts != 0 ? report.ts : now
        let caller = UInt32(bitPattern: report.caller)
        return report.results.compactMap { result in
            guard (0...65535).contains(result.port) else { return nil }
            return Row(key: Row.Key(modid: report.modid, cmdid: report.cmdid, ip: UInt32(bitPattern: result.ip),
                                    port: result.port, caller: caller),
                       succ: result.succ, err: result.err, ts: ts, overload: result.overload)
        }
    }

    /// Each key once, holding its last row in arrival order (a later report of a window replaces an earlier one, as
    /// the database would), in first-seen order.
    static func merge(_ rows: [Row]) -> [Row] {
        var index: [Row.Key: Int] = [:]
        var out: [Row] = []
        for row in rows {
            if let i = index[row.key] {
                out[i] = row
            } else {
                index[row.key] = out.count
                out.append(row)
            }
        }
        return out
    }

    /// Rows in one upsert statement (9 parameters each: 900, below every driver's parameter limit). One statement per
    /// row cost a round trip to the driver's thread each: about 4,300 rows/s on SQLite.
    static let rowsPerStatement = 100

    /// The upsert that writes `rows` rows to ServerCallStatus, overwriting the counts, ts and overload of a row that
    /// exists (a merged batch has each key once, so one statement never updates a row twice).
    static func upsertStatement(_ dialect: SQLDialect, rows: Int = 1) -> String {
        let tuple = "(?, ?, ?, ?, ?, ?, ?, ?, ?)"
        let insert = "INSERT INTO ServerCallStatus (modid, cmdid, ip, port, caller, succ_cnt, err_cnt, ts, overload) "
            + "VALUES " + Array(repeating: tuple, count: max(1, rows)).joined(separator: ", ")
        switch dialect {
        case .sqlite, .postgres:
            return insert + " ON CONFLICT (modid, cmdid, ip, port, caller) DO UPDATE SET "
                + "succ_cnt = excluded.succ_cnt, err_cnt = excluded.err_cnt, ts = excluded.ts, "
                + "overload = excluded.overload"
        case .mysql:
            return insert + " ON DUPLICATE KEY UPDATE succ_cnt = VALUES(succ_cnt), err_cnt = VALUES(err_cnt), "
                + "ts = VALUES(ts), overload = VALUES(overload)"
        }
    }

    /// Writes merged rows in one transaction, ``rowsPerStatement`` to a statement (`fullUpsert` is the statement for
    /// that many). When the database refuses a value of the batch (``StorageError/isAboutTheValues``: a caller out
    /// of its column's range on MariaDB in strict mode, say), the rows are written again one by one, so the good
    /// ones are kept: each one refused is handed to `refused` and left out. Throws what is not about the values
    /// (the connection, the pool): the whole batch may then be tried again, which overwriting makes harmless.
    static func write(_ rows: [Row], _ dialect: SQLDialect, _ fullUpsert: String, on pool: ConnectionPool,
                      refused: @Sendable (Row, StorageError) -> Void = { _, _ in }) async throws
    {
        do {
            try await pool.transaction { conn in
                var start = 0
                while start < rows.count {
                    let chunk = rows[start..<min(rows.count, start + rowsPerStatement)]
                    var parameters: [SQLValue] = []
                    parameters.reserveCapacity(chunk.count * 9)
                    for row in chunk { parameters += row.parameters }
                    let sql = chunk.count == rowsPerStatement ? fullUpsert : upsertStatement(dialect, rows: chunk.count)
                    try await conn.execute(sql, parameters)
                    start += chunk.count
                }
            }
        } catch let error as StorageError where error.isAboutTheValues {
            let single = upsertStatement(dialect, rows: 1)
            for row in rows {
                do {
                    try await pool.execute(single, row.parameters)
                } catch let error as StorageError where error.isAboutTheValues {
                    refused(row, error)
                }
            }
        }
    }
}

/// The rows the database refused: each counted; the first of an episode is logged with its values, the others of
/// the episode are counted in the next line (`reporter.rows_refused_unlogged`), so a misconfigured agent does not
/// flood the log.
final class RefusedRows: Sendable {
    private let logger: Logger
    private let counter: Counter
    private let state = Mutex((count: 0, episode: LogEpisode(quietInterval: .seconds(60))))

    init(logger: Logger, counter: Counter) {
        self.logger = logger
        self.counter = counter
    }

    var count: Int { state.withLock { $0.count } }

    @Sendable func record(_ row: Reporter.Row, _ error: StorageError) {
        counter.increment()
        let now = SystemInfo.monotonicNanoseconds()
        let step = state.withLock { s in
            s.count += 1
            return s.episode.record(now: now)
        }
        guard case .started(let ended) = step else { return }
        let k = row.key
        let text = "reporter: the database refused a row; it is left out, the rest of its batch is written"
        logger.info("\(text)", metadata: [
            "row.modid": "\(k.modid)", "row.cmdid": "\(k.cmdid)",
            "row.ip": "\(IPv4Endpoint(ip: k.ip, port: 0).address)", "row.port": "\(k.port)",
            "row.caller": "\(k.caller)", "row.succ_cnt": "\(row.succ)", "row.err_cnt": "\(row.err)",
            "row.ts": "\(row.ts)", "row.overload": "\(row.overload)",
            "error.description": "\(error)", "reporter.rows_refused_unlogged": "\(ended)",
        ])
    }
}

/// The errors of a ``Reporter``.
public enum ReporterError: Error, Sendable, Hashable, CustomStringConvertible {
    /// A setting is out of range; the text names it.
    case invalidConfiguration(String)
    /// ``Reporter/run()`` was called while the reporter runs.
    case alreadyRunning

    public var description: String {
        switch self {
        case .invalidConfiguration(let text): return "invalid reporter configuration: \(text)"
        case .alreadyRunning: return "the reporter is running already"
        }
    }
}
