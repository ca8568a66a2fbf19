import LarsProtocol
import LoadBalanceClient
import LoadBalancing
@testable import NameService
import Reactor
import RouteStore
import Storage
import RouteTestSupport
import Testing
import TestSupport

/// Registrations' owners: a module with a token takes registrations and deregistrations only with it.
@Suite("NameServiceCore: module owner tokens")
struct TokenCoreTests {
    let support = NameServiceCoreTests()
    let key = RouteKey(modid: 7, cmdid: 1)
    let other = RouteKey(modid: 8, cmdid: 1)
    let host = Host(address: "10.0.0.7", port: 7)!
    let t0 = ContinuousClock.now

    func request(_ key: RouteKey, ttlMs: UInt32, token: String?) -> Switchyard_Lb_RegisterHostRequest {
        var request = support.request(key, host, ttlMs: ttlMs)
        if let token { request.token = token }
        return request
    }

    @Test("without the token or with a wrong one: refused with a reason; with it: registered and taken back")
    func tokenRequired() throws {
        var core = NameServiceCore(limits: NameServiceCore.Limits(NameServiceConfiguration()))
        core.tokensLoaded([7: "s3cret"])
        let missing = core.register(request(key, ttlMs: 1000, token: nil), from: 1, source: 1, now: t0)
        #expect(try support.registerReply(missing)?.ok == false)
        #expect(try support.registerReply(missing)?.reason.contains("owner token") == true)
        let wrong = core.register(request(key, ttlMs: 1000, token: "guess"), from: 1, source: 1, now: t0)
        #expect(try support.registerReply(wrong)?.reason == "wrong token for module 7")
        #expect(core.registrationCount == 0 && core.registrationsRefused == 2)

        let right = core.register(request(key, ttlMs: 1000, token: "s3cret"), from: 1, source: 1, now: t0)
        #expect(try support.registerReply(right)?.ok == true && core.registrationCount == 1)
        // Taking it back needs the token too.
        let takeBack = core.register(request(key, ttlMs: 0, token: nil), from: 2, source: 2, now: t0)
        #expect(try support.registerReply(takeBack)?.ok == false && core.registrationCount == 1)
        _ = core.register(request(key, ttlMs: 0, token: "s3cret"), from: 1, source: 1, now: t0)
        #expect(core.registrationCount == 0)

        // A module without a token takes any registration, as Lars does.
        let open = core.register(request(other, ttlMs: 1000, token: nil), from: 1, source: 1, now: t0)
        #expect(try support.registerReply(open)?.ok == true)
    }
}

extension NameServiceSocketTests {
    @Suite("Module owner tokens over real sockets")
    struct TokenTests {
        @Test("a token set with RouteAdmin: a registration without it is refused, one with it is served",
              arguments: TestDatabase.fileAndServers)
        func tokenFromTheDatabase(db: TestDatabase) async throws {
            let pool = try await makePool(db.url())
            let key = RouteKey(modid: uniqueModid(), cmdid: 1)
            try await RouteAdmin.setModuleToken("owner-\(key.modid)", modid: key.modid, on: pool)
            let running = try await RunningNameService(pool: pool)
            #expect(await eventually { running.service.statistics.reloads >= 1 })
            let group = try EventLoopGroup(ioLoops: 1)
            let stranger = try ServiceRegistration(
                loop: group.next(), nameServicePort: running.port, modid: key.modid, cmdid: key.cmdid,
                host: LoadBalancing.Host(address: "10.5.0.1", port: 9000)!, ttl: .seconds(5))
            let owner = try ServiceRegistration(
                loop: group.next(), nameServicePort: running.port, modid: key.modid, cmdid: key.cmdid,
                host: LoadBalancing.Host(address: "10.5.0.2", port: 9000)!, ttl: .seconds(5),
                token: "owner-\(key.modid)")
            stranger.start()
            owner.start()
            #expect(await eventually { stranger.lastRefusalReason != nil && owner.acceptedCount >= 1 })
            #expect(stranger.lastRefusalReason?.contains("owner token") == true)
            #expect(running.service.snapshot.hosts(for: key) == [LoadBalancing.Host(address: "10.5.0.2", port: 9000)!])

            // The token taken away: anyone may register again (at the next reload).
            try await RouteAdmin.setModuleToken(nil, modid: key.modid, on: pool)
            #expect(await eventually { running.service.snapshot.hosts(for: key).count == 2 })
            stranger.stop()
            owner.stop()
            await onThread { group.shutdown() }
            await running.stop()
            await pool.close()
        }

        @Test("route token: set and clear from the CLI; bad input refused with one line")
        func routeTokenCommand() async throws {
            let url = TestDatabase.sqliteFile
            let database = try url.url()
            let set = try await runSwitchyard(["route", "token", "--modid", "77", "--token", "abc", "--db", database])
            #expect(set.status == 0 && set.stdout.contains("takes registrations with its token"))
            let pool = try await makePool(database)
            #expect(try await RouteAdmin.moduleTokens(on: pool) == [77: "abc"])
            let cleared = try await runSwitchyard(["route", "token", "--modid", "77", "--clear", "--db", database])
            #expect(cleared.status == 0)
            #expect(try await RouteAdmin.moduleTokens(on: pool).isEmpty)
            let bad = try await runSwitchyard(["route", "token", "--modid", "77", "--db", database])
            #expect(bad.status != 0 && bad.stderr.contains("--token or --clear"))
            await pool.close()
        }
    }
}
