import Foundation
import LarsProtocol
import LoadBalancing
import Messaging
@testable import NameService
import Reactor
@testable import Reporter
import Storage
import Testing
import TestSupport

@Suite("Reporter queue")
struct ReportQueueTests {
    @Test("a full queue drops the oldest and counts the drops")
    func dropsOldest() {
        var queue = DropOldestQueue<Int>(capacity: 5)
        for i in 1...7 { queue.append(i) }
        #expect(queue.count == 5)
        #expect(queue.dropped == 2)
        var out: [Int] = []
        while let next = queue.popFirst() { out.append(next) }
        #expect(out == [3, 4, 5, 6, 7])
        queue.append(8)
        #expect(queue.popFirst() == 8)
        #expect(queue.isEmpty)
    }

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

extension NameServiceSocketTests {
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
            let group = try EventLoopGroup(ioLoops: 1)
            let reporter = Reporter(group: group, configuration: ReporterConfiguration(port: 0, flushInterval: .milliseconds(20)),
                                    pool: pool, logger: quietLogger)
            let port = Int(try reporter.start().port)
            let client = try await AsyncFrameClient.connect(port: port, loop: group.next())
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
            await onThread {
                reporter.shutdown()
                group.shutdown()
            }
            await pool.close()
        }

        @Test("a full queue drops the oldest reports and counts them; the rest are written")
        func dropsWhenFull() async throws {
            let pool = try await makePool(TestDatabase.sqliteFile.url(), PoolConfiguration(minConnections: 0, maxConnections: 1))
            let group = try EventLoopGroup(ioLoops: 1)
            let reporter = Reporter(
                group: group,
                configuration: ReporterConfiguration(port: 0, queueCapacity: 5, batchRows: 1,
                                                     flushInterval: .milliseconds(10)),
                pool: pool, logger: quietLogger)
            let port = Int(try reporter.start().port)
            // The only connection is busy: the writer cannot write, the queue fills.
            let held = try await pool.acquire()
            let client = try await AsyncFrameClient.connect(port: port, loop: group.next())
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
            await onThread {
                reporter.shutdown()
                group.shutdown()
            }
            await pool.close()
        }
    }
}
