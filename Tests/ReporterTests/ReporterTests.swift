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
    @Test("rows of one batch with the same key are added up")
    func merge() {
        let key = Reporter.Row.Key(modid: 1, cmdid: 2, ip: 0x7F00_0001, port: 80, caller: 9)
        let other = Reporter.Row.Key(modid: 1, cmdid: 2, ip: 0x7F00_0001, port: 81, caller: 9)
        let merged = Reporter.merge([
            .init(key: key, succ: 5, err: 1, ts: 10, overload: false),
            .init(key: other, succ: 1, err: 0, ts: 10, overload: false),
            .init(key: key, succ: 3, err: 2, ts: 11, overload: true),
        ])
        #expect(merged == [.init(key: key, succ: 8, err: 3, ts: 11, overload: true),
                           .init(key: other, succ: 1, err: 0, ts: 10, overload: false)])
    }
}

extension ReporterSocketTests {
    @Suite("Reporter")
    struct ReporterTests {
        func report(modid: Int32, caller: Int32, ip: String, port: Int32, succ: UInt32, err: UInt32,
                    overload: Bool, ts: UInt32) -> Lars_ReportStatusRequest {
            var result = Lars_HostCallResult()
            result.ip = Int32(bitPattern: LoadBalancing.Host.parseIPv4(ip)!)
            result.port = port
            result.succ = succ
            result.err = err
            result.overload = overload
            var request = Lars_ReportStatusRequest()
            request.modid = modid
            request.cmdid = 1
            request.caller = caller
            request.results = [result]
            request.ts = ts
            return request
        }

        @Test("reports land in ServerCallStatus; the upsert adds the counts up", arguments: TestDatabase.fileAndServers)
        func rowsLand(db: TestDatabase) async throws {
            let pool = try await makePool(db.url())
            let running = try await RunningReporter(pool: pool, ReporterConfiguration(flushInterval: .milliseconds(20)))
            let reporter = running.reporter
            let client = try await running.client()
            let modid = uniqueModid()
            try await client.send(report(modid: modid, caller: 7, ip: "192.168.1.10", port: 80, succ: 5, err: 1,
                                         overload: false, ts: 1000), id: MessageID.reportStatusRequest)
            #expect(await eventually { reporter.statistics.written == 1 })
            // The second lands in a later transaction: the upsert, not the batch merge, adds these up.
            try await client.send(report(modid: modid, caller: 7, ip: "192.168.1.10", port: 80, succ: 3, err: 2,
                                         overload: true, ts: 1001), id: MessageID.reportStatusRequest)
            try await client.send(report(modid: modid, caller: 8, ip: "192.168.1.10", port: 80, succ: 4, err: 0,
                                         overload: false, ts: 1002), id: MessageID.reportStatusRequest)
            #expect(await eventually { reporter.statistics.written == 3 })
            let rows = try await pool.query(
                "SELECT caller, ip, port, succ_cnt, err_cnt, ts, overload FROM ServerCallStatus WHERE modid = ? "
                    + "ORDER BY caller", [SQLValue(modid)]).rows
            #expect(rows.count == 2)
            if rows.count == 2 {
                #expect(try rows[0].decode("caller", as: Int64.self) == 7)
                #expect(try rows[0].decode("ip", as: Int64.self) == 0xC0A8_010A)
                #expect(try rows[0].decode("port", as: Int64.self) == 80)
                #expect(try rows[0].decode("succ_cnt", as: Int64.self) == 8)
                #expect(try rows[0].decode("err_cnt", as: Int64.self) == 3)
                #expect(try rows[0].decode("ts", as: Int64.self) == 1001)
                #expect(try rows[0].decode("overload", as: Bool.self) == true)
                #expect(try rows[1].decode("caller", as: Int64.self) == 8)
                #expect(try rows[1].decode("succ_cnt", as: Int64.self) == 4)
            }
            let stats = reporter.statistics
            #expect(stats.received == 3 && stats.dropped == 0 && stats.failedWrites == 0)
            await client.close()
            await running.stop()
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
            await stopping.value
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
