import LarsProtocol
import LoadBalanceClient
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
    @Suite("Replicas: two name services on one database share the self-registrations")
    struct ReplicaTests {
        let registrations = RegistrationTests()

        @Test("a host registered through one replica is pushed by the other, and taken back there too",
              arguments: TestDatabase.fileAndServers)
        func registeredThroughTheOther(db: TestDatabase) async throws {
            let url = try db.url()
            let firstPool = try await makePool(url), secondPool = try await makePool(url)
            let key = RouteKey(modid: uniqueModid(), cmdid: 1)
            let host = LoadBalancing.Host(address: "10.2.0.1", port: 7100)!
            let first = try await RunningNameService(pool: firstPool)
            let second = try await RunningNameService(pool: secondPool)
            let (client, initial) = try await registrations.subscribe(second, key)
            #expect(initial.isEmpty)

            let registration = try ServiceRegistration(
                loop: first.group.next(), nameServicePort: first.port, modid: key.modid, cmdid: key.cmdid,
                host: host, ttl: .seconds(5))
            registration.start()
            let pushed = try await registrations.nextPush(client) { $0.contains(host) }
            #expect(pushed == [host])
            #expect(first.service.snapshot.hosts(for: key) == [host])

            registration.stop()
            let after = try await registrations.nextPush(client) { !$0.contains(host) }
            #expect(after == [])
            #expect(await eventually { first.service.snapshot.hosts(for: key).isEmpty })
            await client.close()
            await first.stop()
            await second.stop()
            await firstPool.close()
            await secondPool.close()
        }

        @Test("a replica that goes away leaves its registrations served by the other until their ttl runs out",
              arguments: TestDatabase.fileAndServers)
        func replicaGone(db: TestDatabase) async throws {
            let url = try db.url()
            let firstPool = try await makePool(url), secondPool = try await makePool(url)
            let key = RouteKey(modid: uniqueModid(), cmdid: 2)
            let host = LoadBalancing.Host(address: "10.2.0.2", port: 7101)!
            let first = try await RunningNameService(pool: firstPool)
            let second = try await RunningNameService(pool: secondPool)
            let (client, _) = try await registrations.subscribe(second, key)
            // The server's own group: it stops without a goodbye when the replica it talks to is gone.
            let serverGroup = try EventLoopGroup(ioLoops: 1)
            let registration = try ServiceRegistration(
                loop: serverGroup.next(), nameServicePort: first.port, modid: key.modid, cmdid: key.cmdid,
                host: host, ttl: .seconds(2))
            registration.start()
            #expect(try await registrations.nextPush(client) { $0.contains(host) } == [host])

            await first.stop()
            let gone = ContinuousClock.now
            #expect(second.service.snapshot.hosts(for: key) == [host], "still served after the replica went")
            // No heartbeat reaches the database now: dropped within the ttl, the replica's grace and a poll.
            let after = try await registrations.nextPush(client, timeout: .seconds(10)) { !$0.contains(host) }
            #expect(after == [])
            // The last heartbeat was at most a third of the ttl before the replica went: the row runs until at
            // least 1.3 s after, and the grace adds 1.35 s (poll 100 ms, writes every 250 ms, 1 s).
            #expect(ContinuousClock.now - gone >= .seconds(2), "served through the ttl and the grace")
            await onThread { [serverGroup] in serverGroup.shutdown() }
            await client.close()
            await second.stop()
            await firstPool.close()
            await secondPool.close()
        }
    }
}
