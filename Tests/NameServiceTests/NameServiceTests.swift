import Foundation
import LarsProtocol
import LoadBalancing
import Messaging
@testable import NameService
import Reactor
import RouteStore
import Storage
import RouteTestSupport
import Testing
import TestSupport

extension NameServiceSocketTests {
    @Suite("Name service")
    struct NameServiceTests {
        @Test("answers a GetRouteRequest with the route's hosts", arguments: TestDatabase.fileServersAndAgent)
        func answersGetRoute(db: TestDatabase) async throws {
            let pool = try await makePool(db.url())
            let key = RouteKey(modid: uniqueModid(), cmdid: 2)
            let hosts = [LoadBalancing.Host(address: "127.0.0.1", port: 9000)!,
                         LoadBalancing.Host(address: "192.168.1.10", port: 80)!]
            for host in hosts { try await RouteAdmin.addHost(host, to: key, on: pool) }
            let running = try await RunningNameService(pool: pool)
            #expect(await eventually { running.service.snapshot.hosts(for: key).count == 2 })
            let client = try await running.client()
            try await askRoute(client, key)
            let frame = try #require(try await nextFrame(client))
            #expect(frame.messageID == MessageID.getRouteResponse.rawValue)
            let response = try frame.decode(as: Lars_GetRouteResponse.self)
            #expect(response.modid == key.modid && response.cmdid == key.cmdid)
            #expect(try routeHosts(frame) == hosts.sorted())
            // A route nobody serves: an empty answer, not silence.
            try await askRoute(client, RouteKey(modid: key.modid, cmdid: 99))
            let empty = try #require(try await nextFrame(client))
            #expect(try routeHosts(empty).isEmpty)
            await client.close()
            await running.stop()
            await pool.close()
        }

        @Test("a route added with RouteAdmin is pushed to a subscribed client within 2 s; a removed host is gone",
              arguments: TestDatabase.fileServersAndAgent)
        func pushOnChange(db: TestDatabase) async throws {
            let url = try db.url()
            let pool = try await makePool(url)
            let admin = try await makePool(url)
            let key = RouteKey(modid: uniqueModid(), cmdid: 1)
            let first = LoadBalancing.Host(address: "10.0.0.1", port: 7001)!
            let second = LoadBalancing.Host(address: "10.0.0.2", port: 7002)!
            try await RouteAdmin.addHost(first, to: key, on: admin)
            let running = try await RunningNameService(pool: pool)
            #expect(await eventually { !running.service.snapshot.hosts(for: key).isEmpty })
            let client = try await running.client()
            try await askRoute(client, key)
            let reply = try #require(try await nextFrame(client))
            #expect(try routeHosts(reply) == [first])

            // Added: pushed without asking again. Through the agent, the change and every poll take two more hops
            // (the driver, the agent's pool), which a loaded machine (the whole suite at once) stretches.
            let within: Duration = db == .agent ? .seconds(5) : .seconds(2)
            let added = ContinuousClock.now
            try await RouteAdmin.addHost(second, to: key, on: admin)
            let push = try #require(try await nextFrame(client, timeout: within) { try routeHosts($0).count == 2 },
                                    "no push within \(within)")
            #expect(ContinuousClock.now - added < within)
            #expect(push.messageID == MessageID.getRouteResponse.rawValue)
            #expect(try routeHosts(push) == [first, second])

            // Removed: the next push no longer has it.
            try await RouteAdmin.removeHost(first, from: key, on: admin)
            let removal = try #require(try await nextFrame(client, timeout: within), "no push after removal")
            #expect(try routeHosts(removal) == [second])

            // A change to another route is not pushed to this client.
            try await RouteAdmin.addHost(first, to: RouteKey(modid: key.modid, cmdid: 2), on: admin)
            #expect(try await nextFrame(client, timeout: .milliseconds(600)) == nil)
            #expect(running.service.statistics.subscriptions >= 1)

            await client.close()
            #expect(await eventually { running.service.statistics.subscriptions == 0 })
            await running.stop()
            await pool.close()
            await admin.close()
        }

        @Test("the database made unreachable (pool closed): lookups keep working, the outage is logged once",
              arguments: TestDatabase.fileServersAndAgent)
        func closedPoolKeepsSnapshot(db: TestDatabase) async throws {
            let url = try db.url()
            let pool = try await makePool(url)
            let key = RouteKey(modid: uniqueModid(), cmdid: 1)
            let host = LoadBalancing.Host(address: "10.1.2.3", port: 4000)!
            try await RouteAdmin.addHost(host, to: key, on: pool)
            let log = LogRecorder()
            let running = try await RunningNameService(pool: pool, pollInterval: .milliseconds(50), logger: log.logger)
            #expect(await eventually { running.service.snapshot.hosts(for: key) == [host] })

            await pool.close()
            #expect(await eventually { !running.service.statistics.databaseReachable })
            #expect(await eventually { running.service.statistics.failedPolls >= 5 })
            let client = try await running.client()
            for _ in 0..<3 {
                try await askRoute(client, key)
                let frame = try #require(try await nextFrame(client))
                #expect(try routeHosts(frame) == [host])
            }
            #expect(log.count(containing: "database unreachable") == 1)
            await client.close()
            await running.stop()
        }

        @Test("SQLite: a broken database (table gone) keeps the snapshot; repaired, it reloads and pushes")
        func brokenThenRepaired() async throws {
            let url = try TestDatabase.sqliteFile.url()
            let pool = try await makePool(url)
            let admin = try await makePool(url)
            let key = RouteKey(modid: 5, cmdid: 5)
            let host = LoadBalancing.Host(address: "10.9.9.9", port: 999)!
            try await RouteAdmin.addHost(host, to: key, on: admin)
            let log = LogRecorder()
            let running = try await RunningNameService(pool: pool, pollInterval: .milliseconds(50), logger: log.logger)
            #expect(await eventually { running.service.snapshot.hosts(for: key) == [host] })
            let client = try await running.client()
            try await askRoute(client, key)
            _ = try #require(try await nextFrame(client))

            try await admin.execute("ALTER TABLE RouteVersion RENAME TO RouteVersionAway")
            #expect(await eventually { !running.service.statistics.databaseReachable })
            try await Task.sleep(for: .milliseconds(300))
            try await askRoute(client, key)
            let during = try #require(try await nextFrame(client))
            #expect(try routeHosts(during) == [host])

            // Repaired, with a change made meanwhile: it recovers and pushes.
            try await admin.execute("DELETE FROM RouteData WHERE modid = 5")
            try await admin.execute("ALTER TABLE RouteVersionAway RENAME TO RouteVersion")
            try await admin.execute("UPDATE RouteVersion SET version = version + 1 WHERE id = 1")
            let push = try #require(try await nextFrame(client, timeout: .seconds(3)), "no push after recovery")
            #expect(try routeHosts(push).isEmpty)
            #expect(running.service.statistics.databaseReachable)
            #expect(log.count(containing: "database unreachable") == 1)
            #expect(log.count(containing: "database reachable again") == 1)
            await client.close()
            await running.stop()
            await pool.close()
            await admin.close()
        }

        @Test("wire compatibility: hand-built GetRouteRequest bytes get the exact reply bytes")
        func wireBytes() async throws {
            let pool = try await makePool(TestDatabase.sqliteFile.url())
            let key = RouteKey(modid: 1, cmdid: 2)
            try await RouteAdmin.addHost(LoadBalancing.Host(address: "127.0.0.1", port: 9000)!, to: key, on: pool)
            try await RouteAdmin.addHost(LoadBalancing.Host(address: "192.168.1.10", port: 80)!, to: key, on: pool)
            let running = try await RunningNameService(pool: pool)
            #expect(await eventually { running.service.snapshot.hosts(for: key).count == 2 })

            // PROTOCOL.md: id 1 (Int32 LE), body length 4 (Int32 LE), GetRouteRequest{modid: 1, cmdid: 2}.
            let request: [UInt8] = [0x01, 0x00, 0x00, 0x00, 0x04, 0x00, 0x00, 0x00, 0x08, 0x01, 0x10, 0x02]
            // id 2, body length 30, GetRouteResponse{modid 1, cmdid 2, host [{ip 0x7F000001, port 9000},
            // {ip 192.168.1.10 = 0xC0A8010A as int32 (negative: a 10-byte varint), port 80}]}.
            let expected: [UInt8] = [
                0x02, 0x00, 0x00, 0x00, 0x1E, 0x00, 0x00, 0x00,
                0x08, 0x01, 0x10, 0x02,
                0x1A, 0x09, 0x08, 0x81, 0x80, 0x80, 0xF8, 0x07, 0x10, 0xA8, 0x46,
                0x1A, 0x0D, 0x08, 0x8A, 0x82, 0xA0, 0x85, 0xFC, 0xFF, 0xFF, 0xFF, 0xFF, 0x01, 0x10, 0x50,
            ]
            let port = running.port
            let reply = await onThread { () -> Result<[UInt8], TestFailure> in
                Result { try RawSocket.exchange(port: port, send: request, receive: expected.count) }
                    .mapError { TestFailure("\($0)") }
            }
            #expect(try reply.get() == expected)
            await running.stop()
            await pool.close()
        }
    }
}
