#if canImport(Glibc)
import Glibc
#endif
import Dispatch
import LarsProtocol
import Logging
import Messaging
import Reactor
import RouteStore
import Storage
import SwitchyardCore
import Synchronization

/// Settings of a ``Reporter``.
public struct ReporterConfiguration: Sendable {
    /// Address to bind (default 127.0.0.1).
    public var host: String
    /// Port to bind (default 7779, PROTOCOL.md); 0 lets the kernel pick.
    public var port: Int
    /// Reports held while the database is slow; when full the oldest is dropped (and counted).
    public var queueCapacity: Int
    /// Most ServerCallStatus rows written in one transaction.
    public var batchRows: Int
    /// How long reports are collected before a batch smaller than ``batchRows`` is written.
    public var flushInterval: Duration
    /// Most agent connections at once; more are refused.
    public var maxConnections: Int

    /// Creates a configuration; every setting has a default.
    public init(host: String = "127.0.0.1", port: Int = 7779, queueCapacity: Int = 10_000, batchRows: Int = 500,
                flushInterval: Duration = .milliseconds(100), maxConnections: Int = 100_000) {
        precondition(queueCapacity >= 1 && batchRows >= 1, "queueCapacity and batchRows must be positive")
        self.host = host
        self.port = port
        self.queueCapacity = queueCapacity
        self.batchRows = batchRows
        self.flushInterval = flushInterval
        self.maxConnections = maxConnections
    }
}

/// A snapshot of a reporter's counters. Every received report ends up written, dropped, in a failed write, or
/// still queued: `received == written + dropped + failed + queued`.
public struct ReporterStatistics: Sendable, Hashable {
    /// ReportStatusRequests received.
    public var received: Int
    /// Reports whose rows were committed.
    public var written: Int
    /// Reports dropped because the queue was full (the oldest go first).
    public var dropped: Int
    /// Transactions that failed; their reports are lost (counted in ``failedReports``).
    public var failedWrites: Int
    /// Reports lost in failed transactions.
    public var failedReports: Int
    /// Reports waiting to be written.
    public var queued: Int
}

/// The reporter: agents send ReportStatusRequest (id 3, no reply) with per-host call results; the reporter upserts
/// them into ServerCallStatus, adding up succ_cnt and err_cnt and overwriting ts and overload, per
/// (modid, cmdid, ip, port, caller).
///
///     loop: decode -> bounded queue (drops the oldest when full) -> writer task: every flushInterval, or at once
///     when batchRows rows wait, one transaction of upserts through the pool
///
/// The loops only take a short lock to enqueue; all database work runs in the writer task through the pool's
/// async API. Safe to call from any thread.
public final class Reporter: Sendable {
    /// The settings.
    public let configuration: ReporterConfiguration
    private let core: Core
    private let server: FramedServer
    private let writer = Mutex<Task<Void, Never>?>(nil)

    /// Creates the reporter; nothing is bound until ``start()``.
    ///
    /// - Parameters:
    ///   - group: The loops that serve the agent connections.
    ///   - configuration: Address, port, queue and batch sizes.
    ///   - pool: The database with the ServerCallStatus table (created when missing).
    ///   - logger: Where the reporter logs start, stop and write failures (once per outage; info and below).
    public init(group: EventLoopGroup, configuration: ReporterConfiguration, pool: ConnectionPool, logger: Logger) {
        self.configuration = configuration
        let core = Core(pool: pool, configuration: configuration, logger: logger)
        self.core = core
        let router = MessageRouter<TCPConnection>()
        // Cannot throw: a fresh router with one route.
        try! router.on(MessageID.reportStatusRequest, as: Lars_ReportStatusRequest.self) { request, _ in
            core.enqueue(request)
        }
        server = FramedServer(
            group: group,
            configuration: FramedServerConfiguration(server: ServerConfiguration(
                host: configuration.host, port: configuration.port, maxConnections: configuration.maxConnections,
                logger: logger)),
            router: router)
    }

    /// Binds, starts accepting reports and starts the writer. Returns the bound address.
    @discardableResult
    public func start() throws -> SocketAddress {
        let address = try server.start()
        let core = self.core
        writer.withLock { task in
            task = task ?? Task { await core.runWriter() }
        }
        core.logger.info("reporter listening", metadata: ["address": "\(address)"])
        return address
    }

    /// Stops accepting, then writes what is queued and stops the writer. Blocks (bounded by `timeout`); not on a
    /// loop thread.
    public func shutdown(timeout: Duration = .seconds(5)) {
        server.shutdown()
        let done = DispatchSemaphore(value: 0)
        let task = writer.withLock { task in
            defer { task = nil }
            return task
        }
        core.stopping.store(true, ordering: .releasing)
        guard let task else { return }
        Task.detached {
            await task.value
            done.signal()
        }
        let nanos = Int(clamping: timeout.nanosecondsSaturated)
        if done.wait(timeout: .now() + .nanoseconds(nanos)) == .timedOut {
            task.cancel()
            core.logger.info("reporter stopped before its queue was written",
                             metadata: ["queued": "\(core.statistics.queued)"])
        }
        core.logger.info("reporter stopped")
    }

    /// The bound address once started.
    public var localAddress: SocketAddress? { server.localAddress }

    /// The counters.
    public var statistics: ReporterStatistics { core.statistics }

    /// One ServerCallStatus row to add.
    struct Row: Sendable, Hashable {
        struct Key: Sendable, Hashable {
            var modid: Int32
            var cmdid: Int32
            var ip: UInt32
            var port: Int32
            var caller: Int32
        }
        var key: Key
        var succ: UInt32
        var err: UInt32
        var ts: UInt32
        var overload: Bool
    }

    /// The rows of one report (results with a port out of range are skipped).
    static func rows(of report: Lars_ReportStatusRequest, now: UInt32) -> [Row] {
        let ts = report.ts != 0 ? report.ts : now
        return report.results.compactMap { result in
            guard (0...65535).contains(result.port) else { return nil }
            return Row(key: Row.Key(modid: report.modid, cmdid: report.cmdid, ip: UInt32(bitPattern: result.ip),
                                    port: result.port, caller: report.caller),
                       succ: result.succ, err: result.err, ts: ts, overload: result.overload)
        }
    }

    /// Rows with the same key summed (counts added, the latest ts and overload kept), in first-seen order.
    static func merge(_ rows: [Row]) -> [Row] {
        var index: [Row.Key: Int] = [:]
        var out: [Row] = []
        for row in rows {
            if let i = index[row.key] {
                out[i].succ &+= row.succ
                out[i].err &+= row.err
                if row.ts >= out[i].ts {
                    out[i].ts = row.ts
                    out[i].overload = row.overload
                }
            } else {
                index[row.key] = out.count
                out.append(row)
            }
        }
        return out
    }

    /// The upsert that adds a row's counts to ServerCallStatus.
    static func upsertStatement(_ dialect: SQLDialect) -> String {
        let insert = "INSERT INTO ServerCallStatus (modid, cmdid, ip, port, caller, succ_cnt, err_cnt, ts, overload) "
            + "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
        switch dialect {
        case .sqlite, .postgres:
            return insert + " ON CONFLICT (modid, cmdid, ip, port, caller) DO UPDATE SET "
                + "succ_cnt = ServerCallStatus.succ_cnt + excluded.succ_cnt, "
                + "err_cnt = ServerCallStatus.err_cnt + excluded.err_cnt, ts = excluded.ts, overload = excluded.overload"
        case .mysql:
            return insert + " ON DUPLICATE KEY UPDATE succ_cnt = succ_cnt + VALUES(succ_cnt), "
                + "err_cnt = err_cnt + VALUES(err_cnt), ts = VALUES(ts), overload = VALUES(overload)"
        }
    }

    /// The queue and counters shared by the loops and the writer task.
    final class Core: Sendable {
        let pool: ConnectionPool
        let configuration: ReporterConfiguration
        let logger: Logger
        let queue: Mutex<DropOldestQueue<[Row]>>
        let received = Atomic<Int>(0)
        let written = Atomic<Int>(0)
        let failedWrites = Atomic<Int>(0)
        let failedReports = Atomic<Int>(0)
        let stopping = Atomic<Bool>(false)

        init(pool: ConnectionPool, configuration: ReporterConfiguration, logger: Logger) {
            self.pool = pool
            self.configuration = configuration
            self.logger = logger
            queue = Mutex(DropOldestQueue(capacity: configuration.queueCapacity))
        }

        var statistics: ReporterStatistics {
            let (dropped, queued) = queue.withLock { ($0.dropped, $0.count) }
            return ReporterStatistics(
                received: received.load(ordering: .relaxed), written: written.load(ordering: .relaxed),
                dropped: dropped, failedWrites: failedWrites.load(ordering: .relaxed),
                failedReports: failedReports.load(ordering: .relaxed), queued: queued)
        }

        /// Queues a report's rows. Loop thread (any thread); a short lock, no I/O.
        func enqueue(_ report: Lars_ReportStatusRequest) {
            let rows = Reporter.rows(of: report, now: UInt32(truncatingIfNeeded: time(nil)))
            queue.withLock { _ = $0.append(rows) }
            received.wrappingAdd(1, ordering: .releasing)
        }

        /// Takes whole reports from the queue until `batchRows` rows are taken (at least one report).
        func takeBatch() -> (reports: Int, rows: [Row]) {
            queue.withLock { q in
                var reports = 0
                var rows: [Row] = []
                while rows.count < configuration.batchRows, let next = q.popFirst() {
                    reports += 1
                    rows += next
                }
                return (reports, rows)
            }
        }

        /// Writes batches until stopped (then writes what is left) or cancelled.
        func runWriter() async {
            var schemaReady = false
            var failing = false
            let upsert = Reporter.upsertStatement(pool.dialect)
            while !Task.isCancelled {
                let (reports, rows) = takeBatch()
                if reports == 0 {
                    if stopping.load(ordering: .acquiring) { break }
                    try? await Task.sleep(for: configuration.flushInterval)
                    continue
                }
                let merged = Reporter.merge(rows)
                do {
                    if !schemaReady {
                        try await RouteSchema.create(on: pool)
                        schemaReady = true
                    }
                    try await pool.transaction { conn in
                        for row in merged {
                            try await conn.execute(upsert, [
                                SQLValue(row.key.modid), SQLValue(row.key.cmdid), .integer(Int64(row.key.ip)),
                                SQLValue(row.key.port), SQLValue(row.key.caller), .integer(Int64(row.succ)),
                                .integer(Int64(row.err)), .integer(Int64(row.ts)), SQLValue(row.overload),
                            ])
                        }
                    }
                    written.wrappingAdd(reports, ordering: .relaxed)
                    if failing {
                        failing = false
                        logger.info("reporter: database writes work again")
                    }
                } catch {
                    failedWrites.wrappingAdd(1, ordering: .relaxed)
                    failedReports.wrappingAdd(reports, ordering: .relaxed)
                    if !failing {
                        failing = true
                        logger.info("reporter: database write failed; reports are lost until it works again",
                                    metadata: ["error": "\(error)"])
                    }
                }
                // Collect for a while unless a full batch is already waiting.
                let waiting = queue.withLock { $0.count }
                if waiting < configuration.batchRows && !stopping.load(ordering: .acquiring) {
                    try? await Task.sleep(for: configuration.flushInterval)
                }
            }
        }
    }
}
