import Foundation
import LarsProtocol
import LoadBalancing
import Messaging
import Reactor
@testable import Reporter
import ServiceLifecycle
import Storage
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

        @Test("a full queue drops the oldest reports and counts them; the rest are written")
        func dropsWhenFull() async throws {
            let pool = try await makePool(TestDatabase.sqliteFile.url(), PoolConfiguration(minConnections: 0, maxConnections: 1))
            let running = try await RunningReporter(
                pool: pool, ReporterConfiguration(queueCapacity: 5, batchRows: 1, flushInterval: .milliseconds(10)))
            let reporter = running.reporter
            // The only connection is busy: the writer cannot write, the queue fills.
            let held = try await pool.acquire()
            let client = try await running.client()
            for i in 0..<20 {
                try await client.send(report(modid: 3, caller: Int32(i), ip: "10.0.0.1", port: 80, succ: 1, err: 0,
                                             overload: false, ts: 1), id: MessageID.reportStatusRequest)
            }
            #expect(await eventually { reporter.statistics.received == 20 })
            let during = reporter.statistics
            // At most one report is in the writer's hands (waiting for the connection); the queue holds the rest.
            #expect(during.queued >= 4 && during.queued <= 5, "\(during)")
            #expect(during.dropped + during.queued >= 19 && during.dropped >= 14, "\(during)")
            pool.release(held)
            #expect(await eventually {
                let s = reporter.statistics
                return s.written + s.dropped == 20 && s.queued == 0
            })
            let stats = reporter.statistics
            let count = try await pool.queryFirst("SELECT COUNT(*) FROM ServerCallStatus WHERE modid = 3")?
                .decode(0, as: Int.self)
            #expect(count == stats.written)
            // The newest survive: the last report (caller 19) was written.
            #expect(try await pool.queryFirst("SELECT caller FROM ServerCallStatus WHERE modid = 3 AND caller = 19") != nil)
            await client.close()
            await running.stop()
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
            let running = try await RunningReporter(
                pool: pool, ReporterConfiguration(flushInterval: .milliseconds(10), drainTimeout: .milliseconds(300)))
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
            #expect(stats.received == stats.written + stats.dropped + stats.failedReports + stats.queued)
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
            let reporter = Reporter(group: group, configuration: ReporterConfiguration(port: 0, maxQueuedRows: 0),
                                    pool: pool, logger: quietLogger)
            do {
                try await reporter.run()
                Issue.record("run() accepted maxQueuedRows 0")
            } catch {
                #expect("\(error)".contains("maxQueuedRows"))
            }
            await group.shutdown()
            await pool.close()
        }

        @Test("the queue is bounded in rows too: large reports make room by dropping the oldest")
        func rowBound() async throws {
            let pool = try await makePool(TestDatabase.sqliteFile.url(), PoolConfiguration(minConnections: 0, maxConnections: 1))
            let running = try await RunningReporter(
                pool: pool, ReporterConfiguration(queueCapacity: 1000, maxQueuedRows: 10, flushInterval: .milliseconds(10)))
            let reporter = running.reporter
            let held = try await pool.acquire()
            let client = try await running.client()
            // Four reports of 4 rows each: at most 10 rows are held, so at most two reports.
            for caller in 0..<4 {
                var request = report(modid: 6, caller: Int32(caller), ip: "10.0.0.4", port: 80, succ: 1, err: 0,
                                     overload: false, ts: 1)
                request.results = (0..<4).map { i in
                    var result = request.results[0]
                    result.port = 80 + Int32(i)
                    return result
                }
                try await client.send(request, id: MessageID.reportStatusRequest)
            }
            #expect(await eventually { reporter.statistics.received == 4 })
            let stats = reporter.statistics
            #expect(stats.queued == 2 && stats.dropped == 2, "\(stats)")
            pool.release(held)
            #expect(await eventually { reporter.statistics.written == 2 })
            await client.close()
            await running.stop()
            await pool.close()
        }
    }
}
