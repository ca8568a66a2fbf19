import Foundation
import LoadBalancing
@testable import NameService
import RouteStore
import RouteTestSupport
import Storage
import Testing
import TestSupport

@Suite("RouteChange retention")
struct RouteChangeRetentionTests {
    let t0 = ContinuousClock.now

    @Test("a version may be pruned once it was first seen the retention ago, not before")
    func prunesAfterTheRetention() {
        var r = RouteChangeRetention<ContinuousClock.Instant>(retention: .seconds(60))
        r.observe(version: 5, at: t0)
        r.observe(version: 5, at: t0 + .seconds(30))  // the same version again: still first seen at t0
        #expect(r.prunableVersion(now: t0 + .seconds(59)) == nil)
        r.observe(version: 7, at: t0 + .seconds(59))
        #expect(r.prunableVersion(now: t0 + .seconds(60)) == 5)
        r.pruned(through: 5)
        #expect(r.prunableVersion(now: t0 + .seconds(100)) == nil, "7 was first seen 41 s ago")
        #expect(r.prunableVersion(now: t0 + .seconds(119)) == 7)
    }

    @Test("a delete that failed (not confirmed) is offered again; a confirmed one is not")
    func unconfirmedIsOfferedAgain() {
        var r = RouteChangeRetention<ContinuousClock.Instant>(retention: .seconds(1))
        r.observe(version: 3, at: t0)
        #expect(r.prunableVersion(now: t0 + .seconds(2)) == 3)
        #expect(r.prunableVersion(now: t0 + .seconds(3)) == 3)
        r.pruned(through: 3)
        #expect(r.prunableVersion(now: t0 + .seconds(4)) == nil)
        #expect(r.prunedThrough == 3)
    }

    @Test("several versions past the retention at once: the newest of them; the history does not grow")
    func newestOfSeveral() {
        var r = RouteChangeRetention<ContinuousClock.Instant>(retention: .seconds(10))
        for v in 1...1000 { r.observe(version: Int64(v), at: t0 + .milliseconds(v)) }
        #expect(r.prunableVersion(now: t0 + .seconds(10) + .milliseconds(500)) == 500)
        r.pruned(through: 500)
        #expect(r.prunableVersion(now: t0 + .seconds(20)) == 1000)
    }
}

extension NameServiceSocketTests {
    @Suite("RouteChange rows are pruned")
    struct RouteChangePruningTests {
        @Test("rows older than the retention are deleted; newer ones stay until they are old",
              arguments: TestDatabase.fileServersAndAgent)
        func oldRowsDeleted(db: TestDatabase) async throws {
            let pool = try await makePool(db.url())
            let key = RouteKey(modid: uniqueModid(), cmdid: 1)
            func rows() async throws -> Int {
                try await pool.queryFirst("SELECT COUNT(*) FROM RouteChange WHERE modid = ?",
                                          [SQLValue(key.modid)])?.decode(0, as: Int.self) ?? -1
            }
            try await RouteAdmin.addHost(LoadBalancing.Host(address: "10.0.0.1", port: 1)!, to: key, on: pool)
            try await RouteAdmin.addHost(LoadBalancing.Host(address: "10.0.0.2", port: 1)!, to: key, on: pool)
            #expect(try await rows() == 2)
            let running = try await RunningNameService(pool: pool) { $0.routeChangeRetention = .seconds(2) }
            #expect(await eventually { running.service.snapshot.hosts(for: key).count == 2 })
            #expect(await eventually { (try? await rows()) == 0 }, "the two old rows are deleted")
            // Counted once the DELETE's answer is back (through the agent a hop after the rows are gone).
            #expect(await eventually { running.service.statistics.routeChangesPruned >= 2 })
            // A change made while the service runs: first seen by the poll that loads it, kept for 2 s from there.
            try await RouteAdmin.addHost(LoadBalancing.Host(address: "10.0.0.3", port: 1)!, to: key, on: pool)
            #expect(await eventually { running.service.snapshot.hosts(for: key).count == 3 })
            #expect(try await rows() == 1)
            #expect(await eventually { (try? await rows()) == 0 }, "the new row is deleted once it is old")
            // The routes themselves are untouched.
            #expect(try await RouteAdmin.listRoutes(on: pool).filter { $0.key == key }.count == 3)
            await running.stop()
            await pool.close()
        }
    }
}
