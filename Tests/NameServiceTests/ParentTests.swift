import LarsProtocol
import LoadBalancing
import Messaging
import NameService
import Reactor
import RouteStore
import Storage
import RouteTestSupport
import Testing
import TestSupport

extension NameServiceSocketTests {
    @Suite("Regional name services: a parent's routes served below")
    struct ParentTests {
        let registrations = RegistrationTests()

        @Test("a route added at the parent reaches the region's subscribers; the parent down, the region serves it")
        func parentRoutesReachTheRegion() async throws {
            let parentPool = try await makePool(TestDatabase.sqliteFile.url())
            let regionPool = try await makePool(TestDatabase.sqliteFile.url())
            let key = RouteKey(modid: uniqueModid(), cmdid: 1)
            let own = RouteKey(modid: uniqueModid(), cmdid: 2)
            let first = LoadBalancing.Host(address: "10.3.0.1", port: 8000)!
            let second = LoadBalancing.Host(address: "10.3.0.2", port: 8001)!
            let regional = LoadBalancing.Host(address: "10.3.0.9", port: 8009)!
            try await RouteAdmin.addHost(first, to: key, on: parentPool)
            try await RouteAdmin.addHost(first, to: own, on: parentPool)
            try await RouteAdmin.addHost(regional, to: own, on: regionPool)
            let parent = try await RunningNameService(pool: parentPool)
            let region = try await RunningNameService(pool: regionPool) {
                $0.parent = ClientEndpoint(host: "127.0.0.1", port: parent.port)
            }
            #expect(await eventually { region.service.snapshot.hosts(for: own) == [regional] })
            let (client, _) = try await registrations.subscribe(region, key)
            #expect(try await registrations.nextPush(client) { $0 == [first] } == [first])

            try await RouteAdmin.addHost(second, to: key, on: parentPool)
            let start = ContinuousClock.now
            #expect(try await registrations.nextPush(client) { $0.count == 2 } == [first, second])
            #expect(ContinuousClock.now - start < .seconds(2))
            // The region's own rows win over the parent's.
            let (ownClient, ownHosts) = try await registrations.subscribe(region, own)
            #expect(ownHosts == [regional])

            await parent.stop()
            try await askRoute(client, key)
            #expect(try await registrations.nextPush(client) { _ in true } == [first, second],
                    "served from what it held")
            await client.close()
            await ownClient.close()
            await region.stop()
            await parentPool.close()
            await regionPool.close()
        }

        @Test("parents in a loop: a route neither has is asked around once and answered empty, no storm")
        func parentsInALoop() async throws {
            let firstPool = try await makePool(TestDatabase.sqliteFile.url())
            let secondPool = try await makePool(TestDatabase.sqliteFile.url())
            let (firstPort, secondPort) = (try unusedTCPPort(), try unusedTCPPort())
            let first = try await RunningNameService(pool: firstPool) {
                $0.port = firstPort
                $0.parent = ClientEndpoint(host: "127.0.0.1", port: secondPort)
            }
            let second = try await RunningNameService(pool: secondPool) {
                $0.port = secondPort
                $0.parent = ClientEndpoint(host: "127.0.0.1", port: firstPort)
            }
            let key = RouteKey(modid: uniqueModid(), cmdid: 3)
            let (client, hosts) = try await registrations.subscribe(first, key)
            #expect(hosts.isEmpty)
            // The client's request, first -> second (hops 1), second -> first (hops 2): first asked already.
            #expect(await eventually {
                first.service.statistics.requests >= 2 && second.service.statistics.requests >= 1
            })
            let settled = (first.service.statistics.requests, second.service.statistics.requests)
            try await askRoute(client, key)
            #expect(try await nextFrame(client) != nil)
            #expect(await eventually { first.service.statistics.requests == settled.0 + 1 })
            #expect(second.service.statistics.requests == settled.1, "a route asked upstream is not asked again")
            #expect(first.service.snapshot.hosts(for: key).isEmpty && second.service.snapshot.hosts(for: key).isEmpty)
            await client.close()
            await second.stop()
            await first.stop()
            await firstPool.close()
            await secondPool.close()
        }
    }
}
