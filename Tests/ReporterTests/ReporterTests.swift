import Foundation
import LarsProtocol
import LoadBalancing
import Messaging
import Reactor
@testable import Reporter
import ServiceLifecycle
import Storage
import RouteTestSupport
import Testing
import TestSupport

@Suite("Reporter rows")
struct ReporterRowTests {
    @Test("rows of one batch with the same key: the last one is kept (a later report of a window replaces it)")
    func merge() {
        let key = Reporter.Row.Key(modid: 1, cmdid: 2, ip: 0x7F00_0001, port: 80, caller: 9)
        let other = Reporter.Row.Key(modid: 1, cmdid: 2, ip: 0x7F00_0001, port: 81, caller: 9)
        let merged = Reporter.merge([
            .init(key: key, succ: 5, err: 1, ts: 10, overload: false),
            .init(key: other, succ: 1, err: 0, ts: 10, overload: false),
            .init(key: key, succ: 8, err: 3, ts: 11, overload: true),
        ])
        #expect(merged == [.init(key: key, succ: 8, err: 3, ts: 11, overload: true),
                           .init(key: other, succ: 1, err: 0, ts: 10, overload: false)])
    }

    @Test("caller, ip and port are written unsigned; counts are capped at Lars's signed int")
    func parameters() {
        var report = Lars_ReportStatusRequest()
        report.modid = 3
        report.cmdid = 4
        report.caller = Int32(bitPattern: 0xC0A8_0105)  // 192.168.1.5, as Lars's agent sends it
        var result = Lars_HostCallResult()
        result.ip = Int32(bitPattern: 0xC0A8_010A)
        result.port = 8080
        result.succ = .max
        result.err = 7
        report.results = [result]
        let rows = Reporter.rows(of: report, now: 99)
        #expect(rows.count == 1)
        #expect(rows.first?.parameters == [3, 4, .integer(0xC0A8_010A), 8080, .integer(0xC0A8_0105),
                                           .integer(Int64(Int32.max)), 7, 99, false])
    }
}

/// A report shaped as Lars's agent sends it: every host of the module, each with its running counts.
func larsReport(modid: Int32, caller: UInt32, ts: UInt32,
                _ hosts: [(ip: UInt32, port: Int32, succ: UInt32, err: UInt32, overload: Bool)])
    -> Lars_ReportStatusRequest
{
    var request = Lars_ReportStatusRequest()
    request.modid = modid
    request.cmdid = 1
    request.caller = Int32(bitPattern: caller)
    request.ts = ts
    request.results = hosts.map { host in
        var result = Lars_HostCallResult()
        result.ip = Int32(bitPattern: host.ip)
        result.port = host.port
        result.succ = host.succ
        result.err = host.err
        result.overload = host.overload
        return result
    }
    return request
}

/// The stored (succ_cnt, err_cnt, ts, overload) of each (ip, port, caller) of a module.
func storedRows(_ pool: ConnectionPool, modid: Int32) async throws -> [String: [Int64]] {
    let rows = try await pool.query(
        "SELECT ip, port, caller, succ_cnt, err_cnt, ts, overload FROM ServerCallStatus WHERE modid = ?",
        [SQLValue(modid)]).rows
    var out: [String: [Int64]] = [:]
    for row in rows {
        let key = "\(try row.decode(0, as: Int64.self)):\(try row.decode(1, as: Int64.self)):"
            + "\(try row.decode(2, as: Int64.self))"
        out[key] = [try row.decode(3, as: Int64.self), try row.decode(4, as: Int64.self),
                    try row.decode(5, as: Int64.self), try row.decode(6, as: Bool.self) ? 1 : 0]
    }
    return out
}

extension ReporterSocketTests {
    @Suite("Reporter")
    struct ReporterTests {
        func report(modid: Int32, caller: Int32, ip: String, port: Int32, succ: UInt32, err: UInt32,
                    overload: Bool, ts: UInt32) -> Lars_ReportStatusRequest {
            larsReport(modid: modid, caller: UInt32(bitPattern: caller), ts: ts,
                       [(LoadBalancing.Host.parseIPv4(ip)!, port, succ, err, overload)])
        }

        static let agentA: UInt32 = 0xC0A8_0105  // 192.168.1.5: above 2^31, Lars writes it unsigned
        static let agentB: UInt32 = 0x0A00_0005  // 10.0.0.5
        static let hostX: UInt32 = 0xC0A8_010A   // 192.168.1.10
        static let hostY: UInt32 = 0xC0A8_010B

        @Test("Lars's agent's reports (running window counts): each row holds the last report, not a sum",
              arguments: TestDatabase.fileServersAndAgent)
        func rowsHoldTheLastReport(db: TestDatabase) async throws {
            let pool = try await makePool(db.url())
            let running = try await RunningReporter(pool: pool, ReporterConfiguration(flushInterval: .milliseconds(20)))
            let reporter = running.reporter
            let client = try await running.client()
            let modid = uniqueModid()
            let (a, b, x, y) = (Self.agentA, Self.agentB, Self.hostX, Self.hostY)
            // Three reports of one window from agent A (every host, counts growing), then the window restarts; each
            // is written in a transaction of its own, so the database's upsert, not the batch merge, decides.
            let window: [[(ip: UInt32, port: Int32, succ: UInt32, err: UInt32, overload: Bool)]] = [
                [(x, 80, 1, 0, false), (y, 80, 0, 0, false)],
                [(x, 80, 3, 1, false), (y, 80, 2, 0, false)],
                [(x, 80, 6, 1, false), (y, 80, 2, 2, true)],
                [(x, 80, 1, 0, false), (y, 80, 0, 0, true)],
            ]
            for (i, hosts) in window.enumerated() {
                try await client.send(larsReport(modid: modid, caller: a, ts: 1000 + UInt32(i), hosts),
                                      id: MessageID.reportStatusRequest)
                #expect(await eventually { reporter.statistics.written == i + 1 })
            }
            try await client.send(larsReport(modid: modid, caller: b, ts: 2000, [(x, 80, 4, 0, false)]),
                                  id: MessageID.reportStatusRequest)
            #expect(await eventually { reporter.statistics.written == window.count + 1 })
            let rows = try await storedRows(pool, modid: modid)
            #expect(rows == [
                "\(x):80:\(a)": [1, 0, 1003, 0],
                "\(y):80:\(a)": [0, 0, 1003, 1],
                "\(x):80:\(b)": [4, 0, 2000, 0],
            ])
            let stats = reporter.statistics
            #expect(stats.received == 5 && stats.dropped == 0 && stats.failedWrites == 0 && stats.rowsRefused == 0)
            await client.close()
            await running.stop()
            await pool.close()
        }

        @Test("reports of one window in one batch: the last one is stored", arguments: TestDatabase.fileServersAndAgent)
        func oneBatchKeepsTheLast(db: TestDatabase) async throws {
            let pool = try await makePool(db.url())
            // A long flush interval: the three reports wait and go in one transaction.
            let running = try await RunningReporter(pool: pool, ReporterConfiguration(flushInterval: .seconds(30)))
            let client = try await running.client()
            let modid = uniqueModid()
            for (i, succ) in [2, 5, 9].enumerated() {
                try await client.send(larsReport(modid: modid, caller: Self.agentA, ts: 50 + UInt32(i),
                                                 [(Self.hostX, 81, UInt32(succ), UInt32(i), false)]),
                                      id: MessageID.reportStatusRequest)
            }
            #expect(await eventually { running.reporter.statistics.received == 3 })
            await client.close()
            await running.stop()  // graceful: writes what is queued
            #expect(running.reporter.statistics.written == 3)
            #expect(try await storedRows(pool, modid: modid) == ["\(Self.hostX):81:\(Self.agentA)": [9, 2, 52, 0]])
            await pool.close()
        }

        /// A report of `results` results (ports 1...results) from `caller`.
        func bigReport(modid: Int32, caller: Int32, results: Int) -> Lars_ReportStatusRequest {
            var request = report(modid: modid, caller: caller, ip: "10.0.0.9", port: 1, succ: 1, err: 0,
                                 overload: false, ts: 1)
            let template = request.results[0]
            request.results = (1...results).map { port in
                var result = template
                result.port = Int32(port)
                return result
            }
            return request
        }

        @Test("many large reports on one connection: the queue stays in its byte bound, all end up in SQLite",
              arguments: PollerKind.allCases)
        func pushesBackWithinTheByteBound(poller: PollerKind) async throws {
            let pool = try await makePool(TestDatabase.sqliteFile.url(), PoolConfiguration(
                minConnections: 0, maxConnections: 1, acquireTimeout: .seconds(60)))
            let perReport = 500
            let bound = ReporterConfiguration.queuedBytes(results: perReport) * 3
            let running = try await RunningReporter(pool: pool, poller: poller, ReporterConfiguration(
                queueCapacity: 1000, maxQueuedBytes: bound, maxReportResults: perReport, batchRows: perReport,
                flushInterval: .milliseconds(10)))
            let reporter = running.reporter
            let modid = uniqueModid()
            // The database is busy at first: the queue fills and the connection must be paused, not drained.
            let held = try await pool.acquire()
            let client = try await running.client()
            let reports = 30
            let sender = Task {
                for caller in 0..<reports {
                    try await client.send(bigReport(modid: modid, caller: Int32(caller), results: perReport),
                                          id: MessageID.reportStatusRequest)
                }
            }
            #expect(await eventually { reporter.statistics.pauses >= 1 })
            let during = reporter.statistics
            #expect(during.received < reports, "a paused connection is not read: \(during)")
            #expect(during.queuedBytes <= bound, "\(during)")
            pool.release(held)
            try await sender.value
            #expect(await eventually(timeout: .seconds(60)) {
                let s = reporter.statistics
                return s.received == reports && s.queued == 0
            })
            let stats = reporter.statistics
            #expect(stats.written == reports && stats.dropped == 0 && stats.failedReports == 0, "\(stats)")
            #expect(stats.peakQueuedBytes <= bound, "\(stats)")
            #expect(stats.peakQueuedBytes >= ReporterConfiguration.queuedBytes(results: perReport) * 2, "\(stats)")
            let count = try await pool.queryFirst("SELECT COUNT(*) FROM ServerCallStatus WHERE modid = ?",
                                                  [SQLValue(modid)])?.decode(0, as: Int.self)
            #expect(count == reports * perReport)
            await client.close()
            await running.stop()
            await pool.close()
        }

        @Test("a report with more results than maxReportResults is refused and counted; the connection goes on")
        func oversizedReportRefused() async throws {
            let pool = try await makePool(TestDatabase.sqliteFile.url())
            let lines = Shared<[CapturedLog]>([])
            let running = try await RunningReporter(
                pool: pool, logger: CapturingLogHandler.logger(into: lines, level: .info),
                ReporterConfiguration(maxReportResults: 10, flushInterval: .milliseconds(10)))
            let reporter = running.reporter
            let modid = uniqueModid()
            let client = try await running.client()
            for caller in 0..<3 {
                try await client.send(bigReport(modid: modid, caller: Int32(caller), results: 11),
                                      id: MessageID.reportStatusRequest)
            }
            try await client.send(bigReport(modid: modid, caller: 9, results: 10), id: MessageID.reportStatusRequest)
            #expect(await eventually { reporter.statistics.written == 1 })
            let stats = reporter.statistics
            #expect(stats.refused == 3 && stats.received == 4, "\(stats)")
            let count = try await pool.queryFirst("SELECT COUNT(*) FROM ServerCallStatus WHERE modid = ?",
                                                  [SQLValue(modid)])?.decode(0, as: Int.self)
            #expect(count == 10)
            let refusals = lines.get().filter { $0.message.contains("too many results") }
            #expect(refusals.count == 1, "one line for the episode: \(refusals)")
            await client.close()
            await running.stop()
            await pool.close()
        }

        @Test("graceful shutdown writes the reports queued and those waiting on a paused connection")
        func shutdownWritesParkedReports() async throws {
            let pool = try await makePool(TestDatabase.sqliteFile.url(), PoolConfiguration(
                minConnections: 0, maxConnections: 1, acquireTimeout: .seconds(60)))
            let running = try await RunningReporter(pool: pool, ReporterConfiguration(
                queueCapacity: 2, batchRows: 1, flushInterval: .milliseconds(10), drainTimeout: .seconds(60)))
            let reporter = running.reporter
            let modid = uniqueModid()
            let held = try await pool.acquire()
            let client = try await running.client()
            for caller in 0..<10 {
                try await client.send(bigReport(modid: modid, caller: Int32(caller), results: 1),
                                      id: MessageID.reportStatusRequest)
            }
            #expect(await eventually { reporter.statistics.pauses >= 1 && reporter.statistics.received >= 3 })
            let stopping = Task { await running.stop() }
            try await Task.sleep(for: .milliseconds(200))
            pool.release(held)
            _ = await stopping.value
            let stats = reporter.statistics
            #expect(stats.written == stats.received && stats.queued == 0 && stats.dropped == 0, "\(stats)")
            let count = try await pool.queryFirst("SELECT COUNT(*) FROM ServerCallStatus WHERE modid = ?",
                                                  [SQLValue(modid)])?.decode(0, as: Int.self)
            #expect(count == stats.written)
            await client.close()
            await pool.close()
        }

        @Test("graceful shutdown: accepting stops, then the queued reports are written before run() returns")
        func drainsOnShutdown() async throws {
            let pool = try await makePool(TestDatabase.sqliteFile.url(), PoolConfiguration(minConnections: 0, maxConnections: 1))
            let running = try await RunningReporter(
                pool: pool, ReporterConfiguration(batchRows: 3, flushInterval: .milliseconds(10), drainTimeout: .seconds(60)))
            let reporter = running.reporter
            let held = try await pool.acquire()
            let client = try await running.client()
            for i in 0..<10 {
                try await client.send(report(modid: 4, caller: Int32(i), ip: "10.0.0.2", port: 80, succ: 1, err: 0,
                                             overload: false, ts: 1), id: MessageID.reportStatusRequest)
            }
            #expect(await eventually { reporter.statistics.received == 10 })
            #expect(reporter.statistics.written == 0)
            let stopping = Task { await running.stop() }
            try await Task.sleep(for: .milliseconds(300))
            #expect(reporter.statistics.queued == 10, "still waiting for the database")
            pool.release(held)
            let took = await stopping.value
            let stats = reporter.statistics
            #expect(stats.written == 10 && stats.queued == 0 && stats.dropped == 0, "\(stats)")
            #expect(took >= .milliseconds(300), "run() waited for the database")
            let count = try await pool.queryFirst("SELECT COUNT(*) FROM ServerCallStatus WHERE modid = 4")?
                .decode(0, as: Int.self)
            #expect(count == 10)
            await client.close()
            await pool.close()
        }

        @Test("graceful shutdown with a database that does not answer ends after the drain timeout")
        func drainIsBounded() async throws {
            let pool = try await makePool(
                TestDatabase.sqliteFile.url(),
                PoolConfiguration(minConnections: 0, maxConnections: 1, acquireTimeout: .seconds(30)))
            let lines = Shared<[CapturedLog]>([])
            let running = try await RunningReporter(
                pool: pool, logger: CapturingLogHandler.logger(into: lines, level: .info),
                ReporterConfiguration(flushInterval: .milliseconds(10), drainTimeout: .milliseconds(300)))
            let reporter = running.reporter
            let held = try await pool.acquire()
            let client = try await running.client()
            for i in 0..<5 {
                try await client.send(report(modid: 5, caller: Int32(i), ip: "10.0.0.3", port: 80, succ: 1, err: 0,
                                             overload: false, ts: 1), id: MessageID.reportStatusRequest)
            }
            #expect(await eventually { reporter.statistics.received == 5 })
            let took = await running.stop()
            #expect(took < .seconds(20), "stopped \(took) after the shutdown began, not after the 30 s acquire timeout")
            let stats = reporter.statistics
            #expect(stats.written == 0 && stats.queued == 5, "\(stats)")
            #expect(stats.received == stats.written + stats.dropped + stats.refused + stats.failedReports
                        + stats.queued)
            let lost = lines.get().filter { $0.metadata["reporter.unwritten"] != nil }
            #expect(lost.map { $0.metadata["reporter.unwritten"] } == ["5"], "the count lost is logged: \(lost)")
            pool.release(held)
            await client.close()
            await pool.close()
        }

        @Test("a port already taken: start() and run() throw, nothing is left listening")
        func portTaken() async throws {
            let pool = try await makePool(TestDatabase.sqliteFile.url())
            let (fd, port) = try boundLoopbackSocket(listenBacklog: 8)
            defer { close(fd) }
            let group = try EventLoopGroup(ioLoops: 1)
            let reporter = Reporter(group: group, configuration: ReporterConfiguration(port: Int(port)), pool: pool,
                                    logger: quietLogger)
            #expect(throws: (any Error).self) { try reporter.start() }
            let other = Reporter(group: group, configuration: ReporterConfiguration(port: Int(port)), pool: pool,
                                 logger: quietLogger)
            await #expect(throws: (any Error).self) {
                try await withTimeout(10, "run() on a taken port") { try await other.run() }
            }
            #expect(reporter.localAddress == nil && other.localAddress == nil)
            await group.shutdown()
            await pool.close()
        }

        @Test("a configuration out of range: run() throws naming the setting")
        func invalidConfiguration() async throws {
            #expect(throws: ReporterError.self) { try ReporterConfiguration(queueCapacity: 0).validate() }
            #expect(throws: ReporterError.self) { try ReporterConfiguration(batchRows: 0).validate() }
            #expect(throws: ReporterError.self) { try ReporterConfiguration(port: 70_000).validate() }
            #expect(throws: Never.self) { try ReporterConfiguration().validate() }
            let pool = try await makePool(TestDatabase.sqliteFile.url())
            let group = try EventLoopGroup(ioLoops: 1)
            let reporter = Reporter(group: group, configuration: ReporterConfiguration(port: 0, maxQueuedBytes: 10),
                                    pool: pool, logger: quietLogger)
            do {
                try await reporter.run()
                Issue.record("run() accepted maxQueuedBytes 10")
            } catch {
                #expect("\(error)".contains("maxQueuedBytes"))
            }
            await group.shutdown()
            await pool.close()
        }
    }
}

#if MySQL
extension ReporterSocketTests {
    /// Against Lars's own table on MariaDB in strict mode (scripts/db makes the database `switchyard_lars`).
    @Suite("Reporter on Lars's MariaDB schema")
    struct LarsSchemaTests {
        /// Lars's ServerCallStatus: ip, port and caller `int unsigned`, the counts signed `int`, overload `char(1)`.
        static let larsTable = """
            CREATE TABLE IF NOT EXISTS ServerCallStatus (modid int(11) NOT NULL, cmdid int(11) NOT NULL, \
            ip int(11) unsigned NOT NULL, port int(11) unsigned NOT NULL, caller int(11) unsigned NOT NULL, \
            succ_cnt int(11) NOT NULL, err_cnt int(11) NOT NULL, ts bigint(20) NOT NULL, overload char(1) NOT NULL, \
            PRIMARY KEY (modid, cmdid, ip, port, caller)) ENGINE=InnoDB DEFAULT CHARSET=utf8
            """

        func larsURL() throws -> String {
            guard let url = ProcessInfo.processInfo.environment["SWITCHYARD_TEST_MYSQL_LARS_URL"], !url.isEmpty else {
                throw TestFailure("SWITCHYARD_TEST_MYSQL_LARS_URL is not set: run `scripts/db start && source "
                                  + ".build-db/env` (it makes the switchyard_lars database)")
            }
            return url
        }

        /// A pool of one connection (a temporary table lives on its connection) in strict mode.
        func strictPool(_ url: String) async throws -> ConnectionPool {
            let pool = try ConnectionPool(url: url, configuration: PoolConfiguration(minConnections: 1,
                                                                                     maxConnections: 1),
                                          logger: quietLogger)
            let mode = try await pool.query("SELECT @@SESSION.sql_mode").rows.first?.decode(0, as: String.self)
            #expect(mode?.contains("STRICT_TRANS_TABLES") == true, "MariaDB is not in strict mode: \(mode ?? "")")
            return pool
        }

        @Test("callers and hosts from 128.0.0.0 up land in Lars's unsigned columns")
        func unsignedColumns() async throws {
            let pool = try await strictPool(try larsURL())
            try await pool.execute(Self.larsTable)
            let running = try await RunningReporter(pool: pool, ReporterConfiguration(flushInterval: .milliseconds(20)))
            let client = try await running.client()
            let modid = uniqueModid()
            let (a, x) = (ReporterTests.agentA, ReporterTests.hostX)
            try await client.send(larsReport(modid: modid, caller: a, ts: 7, [(x, 65535, 3, 1, true)]),
                                  id: MessageID.reportStatusRequest)
            #expect(await eventually { running.reporter.statistics.written == 1 })
            try await client.send(larsReport(modid: modid, caller: a, ts: 8, [(x, 65535, 5, 1, false)]),
                                  id: MessageID.reportStatusRequest)
            #expect(await eventually { running.reporter.statistics.written == 2 })
            #expect(try await storedRows(pool, modid: modid) == ["\(x):65535:\(a)": [5, 1, 8, 0]])
            #expect(running.reporter.statistics.rowsRefused == 0 && running.reporter.statistics.failedWrites == 0)
            await client.close()
            await running.stop()
            await pool.close()
        }

        @Test("a row the database refuses does not take its batch down: the good rows are written, it is logged")
        func refusedRowKeepsTheBatch() async throws {
            let pool = try await strictPool(try larsURL())
            // Some Lars deployments have a signed caller column: there a caller from 128.0.0.0 up is out of range
            // (MariaDB error 1264). A temporary table on the pool's one connection shadows the unsigned one.
            try await pool.execute("""
                CREATE TEMPORARY TABLE ServerCallStatus (modid int(11) NOT NULL, cmdid int(11) NOT NULL, \
                ip int(11) unsigned NOT NULL, port int(11) unsigned NOT NULL, caller int(11) NOT NULL, \
                succ_cnt int(11) NOT NULL, err_cnt int(11) NOT NULL, ts bigint(20) NOT NULL, \
                overload char(1) NOT NULL, PRIMARY KEY (modid, cmdid, ip, port, caller))
                """)
            let lines = Shared<[CapturedLog]>([])
            let running = try await RunningReporter(
                pool: pool, logger: CapturingLogHandler.logger(into: lines, level: .info),
                ReporterConfiguration(flushInterval: .seconds(30)))
            let client = try await running.client()
            let modid = uniqueModid()
            let (a, b, x, y) = (ReporterTests.agentA, ReporterTests.agentB, ReporterTests.hostX, ReporterTests.hostY)
            // One batch: agent B's two good rows around agent A's refused one.
            try await client.send(larsReport(modid: modid, caller: b, ts: 1, [(x, 80, 2, 0, false)]),
                                  id: MessageID.reportStatusRequest)
            try await client.send(larsReport(modid: modid, caller: a, ts: 2, [(x, 80, 9, 9, false)]),
                                  id: MessageID.reportStatusRequest)
            try await client.send(larsReport(modid: modid, caller: b, ts: 3, [(y, 80, 4, 1, false)]),
                                  id: MessageID.reportStatusRequest)
            #expect(await eventually { running.reporter.statistics.received == 3 })
            await client.close()
            await running.stop()
            let stats = running.reporter.statistics
            #expect(stats.rowsRefused == 1 && stats.written == 3 && stats.failedReports == 0)
            #expect(try await storedRows(pool, modid: modid) == [
                "\(x):80:\(b)": [2, 0, 1, 0], "\(y):80:\(b)": [4, 1, 3, 0],
            ])
            let refused = lines.get().filter { $0.message.contains("refused a row") }
            #expect(refused.count == 1)
            #expect(refused.first?.metadata["row.caller"] == "\(a)")
            #expect(refused.first?.metadata["error.description"]?.contains("1264") == true)
            try await pool.execute("DROP TEMPORARY TABLE ServerCallStatus")
            await pool.close()
        }
    }
}
#endif
