import Foundation
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
    @Suite("Self-registration with a time to live (ids 102/103)")
    struct RegistrationTests {
        /// A subscribed agent-like client: asks for `key` and returns the first answer's hosts.
        func subscribe(_ running: RunningNameService, _ key: RouteKey) async throws -> (AsyncFrameClient, [LoadBalancing.Host]) {
            let client = try await running.client()
            try await askRoute(client, key)
            let first = try #require(try await nextFrame(client) { $0.messageID == MessageID.getRouteResponse.rawValue })
            return (client, try routeHosts(first))
        }

        /// The next pushed route of `key` whose hosts satisfy `match`, or nil after `timeout`.
        func nextPush(_ client: AsyncFrameClient, timeout: Duration = .seconds(5),
                      _ match: @escaping ([LoadBalancing.Host]) -> Bool) async throws -> [LoadBalancing.Host]? {
            let frame = try await nextFrame(client, timeout: timeout) {
                guard $0.messageID == MessageID.getRouteResponse.rawValue else { return false }
                return match(try routeHosts($0))
            }
            return try frame.map(routeHosts)
        }

        @Test("a registered host is pushed next to RouteData's; stop() takes it back at once")
        func registerAndStop() async throws {
            let pool = try await makePool(TestDatabase.sqliteFile.url())
            let key = RouteKey(modid: uniqueModid(), cmdid: 3)
            let fromDatabase = LoadBalancing.Host(address: "10.1.0.1", port: 7000)!
            let registered = LoadBalancing.Host(address: "10.1.0.2", port: 7001)!
            try await RouteAdmin.addHost(fromDatabase, to: key, on: pool)
            let running = try await RunningNameService(pool: pool)
            #expect(await eventually { running.service.snapshot.hosts(for: key) == [fromDatabase] })
            let (client, initial) = try await subscribe(running, key)
            #expect(initial == [fromDatabase])

            let registration = try ServiceRegistration(
                loop: running.group.next(), nameServicePort: running.port, modid: key.modid, cmdid: key.cmdid,
                host: registered, ttl: .seconds(5))
            let start = ContinuousClock.now
            registration.start()
            let pushed = try await nextPush(client) { $0.contains(registered) }
            #expect(pushed == [fromDatabase, registered].sorted())
            #expect(ContinuousClock.now - start < .seconds(2))
            #expect(await eventually { registration.acceptedCount >= 1 })
            // A database reload keeps the registered host.
            try await running.service.reload()
            #expect(running.service.snapshot.hosts(for: key) == [fromDatabase, registered].sorted())

            registration.stop()
            let after = try await nextPush(client) { !$0.contains(registered) }
            #expect(after == [fromDatabase])
            await client.close()
            await running.stop()
            await pool.close()
        }

        @Test("heartbeats keep a host registered past its ttl; without them it drops out when the ttl runs out")
        func ttlExpiry() async throws {
            let pool = try await makePool(TestDatabase.sqliteFile.url())
            let key = RouteKey(modid: uniqueModid(), cmdid: 4)
            let host = LoadBalancing.Host(address: "10.1.0.3", port: 7002)!
            let running = try await RunningNameService(pool: pool)
            let (client, initial) = try await subscribe(running, key)
            #expect(initial.isEmpty)
            // A group of its own, so the registration can be cut off without a goodbye (as a crashed server).
            let serverGroup = try EventLoopGroup(ioLoops: 1)
            // Long enough that a heartbeat (every third of it, checked every sixth) delayed by a loaded machine still
            // comes in time: with 1.5 s a stall of 750 ms of either process's loop under the whole suite (CI) let the
            // host run out once.
            let ttl = Duration.seconds(3)
            let registration = try ServiceRegistration(
                loop: serverGroup.next(), nameServicePort: running.port, modid: key.modid, cmdid: key.cmdid,
                host: host, ttl: ttl)
            registration.start()
            #expect(try await nextPush(client) { $0 == [host] } != nil)
            // Two ttls with heartbeats: still there, and no push took it away.
            let pushedAway = try await nextPush(client, timeout: ttl * 2) { !$0.contains(host) }
            #expect(pushedAway == nil)
            #expect(running.service.snapshot.hosts(for: key) == [host])
            #expect(await eventually { registration.acceptedCount >= 3 })
            // The server's process "dies": its loops stop, no deregistration is sent.
            // (Its socket stays open in this process, so stopping the name service below waits out the linger.)
            await onThread { serverGroup.shutdown() }
            let dropped = ContinuousClock.now
            #expect(try await nextPush(client, timeout: ttl * 3) { $0.isEmpty } != nil)
            #expect(ContinuousClock.now - dropped < ttl * 3)
            #expect(running.service.snapshot.hosts(for: key).isEmpty)
            await client.close()
            await running.stop()
            await pool.close()
        }

        @Test("bad registrations get a reason and change nothing; the connection stays usable")
        func refusals() async throws {
            let pool = try await makePool(TestDatabase.sqliteFile.url())
            let running = try await RunningNameService(pool: pool)
            let client = try await running.client()
            let key = RouteKey(modid: uniqueModid(), cmdid: 5)
            func register(ip: String, port: Int32, ttlMs: UInt32) async throws -> Switchyard_Lb_RegisterHostResponse {
                var request = Switchyard_Lb_RegisterHostRequest()
                request.modid = key.modid
                request.cmdid = key.cmdid
                request.ip = Int32(bitPattern: LoadBalancing.Host(address: ip, port: 1)!.ip)
                request.port = port
                request.ttlMs = ttlMs
                try await client.send(request, id: MessageID.registerHostRequest)
                let frame = try #require(try await nextFrame(client) { $0.messageID == MessageID.registerHostResponse.rawValue })
                return try frame.decode(as: Switchyard_Lb_RegisterHostResponse.self)
            }
            let badPort = try await register(ip: "10.1.0.4", port: 70_000, ttlMs: 1000)
            #expect(!badPort.ok && badPort.reason.contains("bad host"))
            let zeroIP = try await register(ip: "0.0.0.0", port: 80, ttlMs: 1000)
            #expect(!zeroIP.ok && zeroIP.reason.contains("bad host"))
            let longTTL = try await register(ip: "10.1.0.4", port: 80, ttlMs: 4_000_000)
            #expect(!longTTL.ok && longTTL.reason.contains("above the limit"), "\(longTTL.reason)")
            #expect(running.service.snapshot.hosts(for: key).isEmpty)
            let good = try await register(ip: "10.1.0.4", port: 80, ttlMs: 60_000)
            #expect(good.ok && good.reason.isEmpty)
            #expect(await eventually { running.service.snapshot.hosts(for: key) == [LoadBalancing.Host(address: "10.1.0.4", port: 80)!] })
            let gone = try await register(ip: "10.1.0.4", port: 80, ttlMs: 0)
            #expect(gone.ok)
            #expect(await eventually { running.service.snapshot.hosts(for: key).isEmpty })
            await client.close()
            await running.stop()
            await pool.close()
        }

        @Test("a connection's subscriptions are capped: routes past the cap are answered but not pushed")
        func subscriptionCap() async throws {
            let pool = try await makePool(TestDatabase.sqliteFile.url())
            let running = try await RunningNameService(pool: pool) { $0.maxSubscriptionsPerConnection = 2 }
            let client = try await running.client()
            let modid = uniqueModid()
            let keys = (1...3).map { RouteKey(modid: modid, cmdid: Int32($0)) }
            for key in keys {
                try await askRoute(client, key)
                #expect(try await nextFrame(client) { $0.messageID == MessageID.getRouteResponse.rawValue } != nil)
            }
            #expect(running.service.statistics.subscriptions == 2)
            // A registration for the third route is not pushed; one for the first is.
            let host = LoadBalancing.Host(address: "10.1.0.9", port: 9009)!
            let third = try ServiceRegistration(loop: running.group.next(), nameServicePort: running.port,
                                                modid: modid, cmdid: 3, host: host, ttl: .seconds(30))
            third.start()
            #expect(await eventually { running.service.snapshot.hosts(for: keys[2]) == [host] })
            let first = try ServiceRegistration(loop: running.group.next(), nameServicePort: running.port,
                                                modid: modid, cmdid: 1, host: host, ttl: .seconds(30))
            first.start()
            let pushed = try #require(try await nextFrame(client) { $0.messageID == MessageID.getRouteResponse.rawValue })
            let response = try pushed.decode(as: Lars_GetRouteResponse.self)
            #expect(response.cmdid == 1, "the first push is for the subscribed route, not the third")
            third.stop()
            first.stop()
            await client.close()
            await running.stop()
            await pool.close()
        }

        @Test("a rebuilt snapshot reuses the encoded answer of every route whose hosts did not change")
        func snapshotReuse() {
            let a = RouteKey(modid: 1, cmdid: 1)
            let b = RouteKey(modid: 1, cmdid: 2)
            let h1 = LoadBalancing.Host(address: "10.0.0.1", port: 1)!
            let h2 = LoadBalancing.Host(address: "10.0.0.2", port: 2)!
            let old = RouteSnapshot(version: 1, entries: [RouteEntry(key: a, host: h1), RouteEntry(key: b, host: h1)])
            let new = RouteSnapshot(version: 2, entries: [RouteEntry(key: a, host: h1), RouteEntry(key: b, host: h2)],
                                    reusing: old)
            func base(_ s: RouteSnapshot, _ k: RouteKey) -> UnsafeRawPointer? {
                s.responseBody(for: k).withUnsafeBytes { $0.baseAddress }
            }
            #expect(base(new, a) == base(old, a))  // the same storage: not encoded again
            #expect(base(new, b) != base(old, b))
            #expect(new.responseBody(for: b) == RouteSnapshot(version: 2, entries: [RouteEntry(key: b, host: h2)])
                .responseBody(for: b))
        }
    }
}
