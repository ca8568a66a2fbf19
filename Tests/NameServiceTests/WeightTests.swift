import Foundation
import LarsProtocol
import LoadBalanceClient
import LoadBalancing
@testable import NameService
import Reactor
@testable import RouteStore
import Storage
import RouteTestSupport
import Testing
import TestSupport

extension NameServiceSocketTests {
    @Suite("Weights in RouteData")
    struct WeightTests {
        /// RouteData as Lars creates it: no weight column.
        static func createLarsTable(_ name: String, on pool: ConnectionPool) async throws {
            let d = pool.dialect
            try await pool.execute("""
                CREATE TABLE \(name) (id \(d.autoIncrementPrimaryKey), modid INTEGER NOT NULL, \
                cmdid INTEGER NOT NULL, serverip \(d.bigintType) NOT NULL, serverport INTEGER NOT NULL)
                """)
        }

        @Test("a Lars RouteData without the weight column loads with weight 1; adding a weight adds the column",
              arguments: TestDatabase.fileAndServers)
        func larsTableWithoutWeight(db: TestDatabase) async throws {
            let pool = try ConnectionPool(url: try db.url(), configuration: PoolConfiguration(minConnections: 0),
                                          logger: quietLogger)
            // Server databases are shared between runs: a table of RouteData's shape under a name of our own.
            let table = "RouteDataLars\(UInt32.random(in: 1...UInt32.max))"
            try await Self.createLarsTable(table, on: pool)
            let modid = uniqueModid()
            for (ip, port) in [(167_772_161, 9000), (167_772_162, 9001)] {
                try await pool.execute("INSERT INTO \(table) (modid, cmdid, serverip, serverport) VALUES (?, 1, ?, ?)",
                                       [SQLValue(modid), .integer(Int64(ip)), .integer(Int64(port))])
            }
            #expect(try await !RouteSchema.hasWeightColumn(on: pool, table: table))
            let entries = try await RouteAdmin.listRoutes(modid: modid, table: table, on: pool)
            #expect(entries.count == 2 && entries.allSatisfy { $0.weight == 1 })
            // Our schema code adds the column (idempotently): the Lars rows weigh 1, a row given a weight has it.
            try await RouteSchema.addWeightColumnIfMissing(on: pool, table: table)
            try await RouteSchema.addWeightColumnIfMissing(on: pool, table: table)
            #expect(try await RouteSchema.hasWeightColumn(on: pool, table: table))
            try await pool.execute("UPDATE \(table) SET weight = 4 WHERE serverport = 9001 AND modid = ?",
                                   [SQLValue(modid)])
            let weighted = try await RouteAdmin.listRoutes(modid: modid, table: table, on: pool)
            #expect(weighted.map(\.weight) == [1, 4])
            // A table that is missing altogether is still an error (not weight 1 for nothing).
            await #expect(throws: StorageError.self) {
                try await RouteAdmin.listRoutes(modid: modid, table: table + "Missing", on: pool)
            }
            try await pool.execute("DROP TABLE \(table)")
            await pool.close()
        }

        @Test("a name service on a Lars database (SQLite, no weight column) serves every host without a weight")
        func nameServiceOnLarsDatabase() async throws {
            let url = temporarySQLiteURL()
            let pool = try ConnectionPool(url: url, configuration: PoolConfiguration(minConnections: 0),
                                          logger: quietLogger)
            try await Self.createLarsTable("RouteData", on: pool)
            try await pool.execute(
                "INSERT INTO RouteData (modid, cmdid, serverip, serverport) VALUES (5, 1, 167772161, 9000)")
            try await RouteSchema.create(on: pool)  // the other tables; RouteData is left as Lars made it
            #expect(try await !RouteSchema.hasWeightColumn(on: pool))
            let key = RouteKey(modid: 5, cmdid: 1)
            let running = try await RunningNameService(pool: pool)
            #expect(await eventually { running.service.snapshot.hosts(for: key).count == 1 })
            let client = try await running.client()
            try await askRoute(client, key)
            let frame = try #require(try await nextFrame(client))
            let response = try frame.decode(as: Lars_GetRouteResponse.self)
            #expect(response.host.count == 1 && !response.host[0].hasWeight)
            // route add with a weight: the column is added, the change pushed with the weight in HostInfo field 5.
            let heavy = LoadBalancing.Host(address: "10.0.0.2", port: 9000)!
            try await RouteAdmin.addHost(heavy, to: key, weight: 3, on: pool)
            let push = try #require(try await nextFrame(client))
            let pushed = try push.decode(as: Lars_GetRouteResponse.self)
            #expect(pushed.host.count == 2)
            #expect(pushed.host.first { $0.ip == heavy.wireIP }?.weight == 3)
            #expect(pushed.host.first { $0.ip != heavy.wireIP }?.hasWeight == false)
            // Changing only the weight is a change too.
            #expect(try await RouteAdmin.addHost(heavy, to: key, weight: 3, on: pool) == .unchanged)
            try await RouteAdmin.addHost(heavy, to: key, weight: 0, on: pool)
            let drained = try #require(try await nextFrame(client))
            let drainedHosts = try drained.decode(as: Lars_GetRouteResponse.self).host
            #expect(drainedHosts.first { $0.ip == heavy.wireIP }?.weight == 0)
            await #expect(throws: RouteAdminError.weightOutOfRange(10_001)) {
                try await RouteAdmin.addHost(heavy, to: key, weight: 10_001, on: pool)
            }
            await client.close()
            await running.stop()
            await pool.close()
        }

        @Test("route add --weight reaches an agent's picks: weights 3 and 1 give 30 and 10 of 40 calls")
        func routeAddWeightReachesAgent() async throws {
            let db = "sqlite:" + temporaryFile("weights").path
            let heavy = ["--ip", "10.0.0.1", "--port", "9000"], light = ["--ip", "10.0.0.2", "--port", "9000"]
            let added = try await runSwitchyard(["route", "add", "--modid", "7", "--cmdid", "1"] + heavy
                                                + ["--weight", "3", "--db", db])
            #expect(added.status == 0, "stderr: \(added.stderr)")
            #expect(added.stdout.contains("with weight 3"))
            _ = try await runSwitchyard(["route", "add", "--modid", "7", "--cmdid", "1"] + light + ["--db", db])
            let bad = try await runSwitchyard(["route", "add", "--modid", "7", "--cmdid", "1"] + light
                                              + ["--weight", "10001", "--db", db])
            #expect(bad.status != 0 && bad.stderr.contains("--weight must be 0...10000"))
            let list = try await runSwitchyard(["route", "list", "--db", db])
            #expect(list.stdout.contains("     3  10.0.0.1:9000") && list.stdout.contains("     1  10.0.0.2:9000"))

            let names = try await ChildService.start(["names", "--port", "0", "--db", db, "--poll-interval", "0.1"])
            let agent = try await ChildService.start(["agent", "--ports", "0", "--names", "127.0.0.1:\(names.port)",
                                                      "--reporter", "127.0.0.1:1"])
            let client = try LoadBalanceClient(agentPorts: [Int(agent.port)], timeout: .seconds(2))
            #expect(try await eventually { try await client.getHost(modid: 7, cmdid: 1).isSuccess })
            var counts: [LoadBalancing.Host: Int] = [:]
            for _ in 0..<40 {
                let host = try #require(try await client.getHost(modid: 7, cmdid: 1).host)
                counts[host, default: 0] += 1
                client.report(modid: 7, cmdid: 1, host: host, success: true)
            }
            // Smooth weighted round robin: any 40 consecutive picks hold exactly 10 periods of 3 + 1.
            #expect(counts[LoadBalancing.Host(address: "10.0.0.1", port: 9000)!] == 30)
            #expect(counts[LoadBalancing.Host(address: "10.0.0.2", port: 9000)!] == 10)
            await client.shutdown()
            _ = await agent.terminate(within: .seconds(10))
            _ = await names.terminate(within: .seconds(10))
        }
    }
}
