import LarsProtocol
import LoadBalancing
@testable import NameService
import RouteStore
import SwiftProtobuf
import Testing

/// The name service's rules without sockets, threads or a clock: connection ids in, actions out, time given.
@Suite("NameServiceCore")
struct NameServiceCoreTests {
    typealias Action = NameServiceCore.Action

    let a = RouteKey(modid: 1, cmdid: 1)
    let b = RouteKey(modid: 1, cmdid: 2)
    let h1 = Host(address: "10.0.0.1", port: 1)!
    let h2 = Host(address: "10.0.0.2", port: 2)!
    /// The mock clock: a fixed start the tests add to.
    let t0 = ContinuousClock.now

    func core(maxSubscriptions: Int = 100, maxRegistrations: Int = 100, maxTTL: Duration = .seconds(3600))
        -> NameServiceCore
    {
        NameServiceCore(limits: NameServiceCore.Limits(NameServiceConfiguration(
            maxRegistrationTTL: maxTTL, maxRegistrations: maxRegistrations,
            maxSubscriptionsPerConnection: maxSubscriptions)))
    }

    /// The hosts of the GetRouteResponse sent to `connection` among `actions`.
    func replyHosts(_ actions: [Action], to connection: UInt64) throws -> [Host]? {
        for case .send(connection, .getRouteResponse, let body) in actions {
            let response = try Lars_GetRouteResponse(serializedBytes: body)
            return response.host.compactMap { Host(wireIP: $0.ip, wirePort: $0.port) }
        }
        return nil
    }

    func registerReply(_ actions: [Action]) throws -> Switchyard_Lb_RegisterHostResponse? {
        for case .send(_, .registerHostResponse, let body) in actions {
            return try Switchyard_Lb_RegisterHostResponse(serializedBytes: body)
        }
        return nil
    }

    func pushes(_ actions: [Action]) -> Set<String> {
        Set(actions.compactMap { action in
            if case .push(let connection, let key) = action { return "\(connection) \(key)" }
            return nil
        })
    }

    func request(_ key: RouteKey, _ host: Host, ttlMs: UInt32) -> Switchyard_Lb_RegisterHostRequest {
        var request = Switchyard_Lb_RegisterHostRequest()
        request.modid = key.modid
        request.cmdid = key.cmdid
        request.ip = host.wireIP
        request.port = Int32(host.port)
        request.ttlMs = ttlMs
        return request
    }

    /// Loads the database and rebuilds, returning the rebuild's actions.
    func load(_ core: inout NameServiceCore, version: Int64, _ entries: [RouteEntry],
              changed: Set<RouteKey> = []) -> [Action] {
        let loaded = core.databaseLoaded(version: version, entries: entries, changed: changed)
        #expect(loaded == [.rebuild])
        return core.rebuildNow()
    }

    @Test("a request subscribes and is answered from the snapshot; a change is pushed to subscribers only")
    func subscribeAndPush() throws {
        var core = core()
        _ = load(&core, version: 1, [RouteEntry(key: a, host: h1)])
        let reply = core.getRoute(a, from: 7)
        #expect(try replyHosts(reply, to: 7) == [h1])
        #expect(try replyHosts(core.getRoute(b, from: 8), to: 8) == [], "no hosts: an empty answer")
        #expect(core.subscriptionCount == 2 && core.requests == 2)

        let changed = load(&core, version: 2, [RouteEntry(key: a, host: h1), RouteEntry(key: a, host: h2)])
        #expect(changed == [.push(connection: 7, route: a)], "b did not change; 8 asked for b")
        #expect(core.snapshot.hosts(for: a) == [h1, h2] && core.snapshot.version == 2)
        #expect(core.pushes == 1)
        // Unchanged hosts push nothing, unless RouteChange names the route.
        #expect(load(&core, version: 3, [RouteEntry(key: a, host: h1), RouteEntry(key: a, host: h2)]).isEmpty)
        #expect(load(&core, version: 4, [RouteEntry(key: a, host: h1), RouteEntry(key: a, host: h2)],
                     changed: [b]) == [.push(connection: 8, route: b)])
    }

    @Test("subscribed before the snapshot is read: a rebuild taken before the request and installed after it pushes")
    func subscribeBeforeRead() throws {
        var core = core()
        _ = core.databaseLoaded(version: 1, entries: [RouteEntry(key: a, host: h1)], changed: [])
        let taken = core.takeRebuild()
        let rebuild = try #require(taken)
        // The request comes while the snapshot is being built off the lock: answered from the old one...
        #expect(try replyHosts(core.getRoute(a, from: 3), to: 3) == [])
        // ...and the install pushes the new one to it.
        #expect(core.install(rebuild.build(), from: rebuild) == [.push(connection: 3, route: a)])
        let again = core.takeRebuild()
        #expect(again == nil, "nothing stale is left")
    }

    @Test("a closed connection is unsubscribed and gets nothing more")
    func closedGetsNothing() {
        var core = core()
        _ = core.getRoute(a, from: 1)
        _ = core.getRoute(b, from: 1)
        _ = core.getRoute(a, from: 2)
        #expect(core.subscriptionCount == 3)
        core.connectionClosed(1)
        #expect(core.subscriptionCount == 1)
        let changed = load(&core, version: 1, [RouteEntry(key: a, host: h1), RouteEntry(key: b, host: h1)])
        #expect(changed == [.push(connection: 2, route: a)])
        core.connectionClosed(2)
        core.connectionClosed(2)  // twice, or never seen: nothing happens
        core.connectionClosed(99)
        #expect(core.subscriptionCount == 0)
        #expect(load(&core, version: 2, []).isEmpty)
    }

    @Test("a connection's subscriptions are capped: past the cap it is answered, not pushed; the limit logged once")
    func subscriptionLimit() throws {
        var core = core(maxSubscriptions: 2)
        let keys = (1...4).map { RouteKey(modid: 5, cmdid: Int32($0)) }
        var logs = 0
        for key in keys {
            let actions = core.getRoute(key, from: 1)
            #expect(try replyHosts(actions, to: 1) == [])
            logs += actions.filter { if case .log(.subscriptionLimitReached(1, 2)) = $0 { true } else { false } }.count
        }
        #expect(logs == 1)
        #expect(core.subscriptionCount == 2)
        let changed = load(&core, version: 1, keys.map { RouteEntry(key: $0, host: h1) })
        #expect(pushes(changed) == ["1 5/1", "1 5/2"])
    }

    @Test("registration: added (pushed, one rebuild for a burst), refreshed (nothing), expired at its ttl, taken back")
    func registrationLifecycle() throws {
        var core = core()
        _ = core.getRoute(a, from: 1)
        let added = core.register(request(a, h1, ttlMs: 1000), from: 9, now: t0)
        #expect(try registerReply(added)?.ok == true)
        #expect(added.contains(.rebuild) && added.contains(.log(.registered(a, h1, ttlMs: 1000))))
        let second = core.register(request(a, h2, ttlMs: 5000), from: 9, now: t0)
        #expect(!second.contains(.rebuild), "a rebuild is asked for already")
        #expect(core.registrationCount == 2)
        #expect(core.rebuildNow() == [.push(connection: 1, route: a)])
        #expect(core.snapshot.hosts(for: a) == [h1, h2])

        // A heartbeat before the ttl runs out moves the expiry; nothing to rebuild.
        let refreshed = core.register(request(a, h1, ttlMs: 1000), from: 9, now: t0 + .milliseconds(900))
        #expect(try registerReply(refreshed)?.ok == true && !refreshed.contains(.rebuild))
        #expect(core.tick(now: t0 + .milliseconds(1500)).isEmpty, "h1 runs until 1.9 s now")
        let expired = core.tick(now: t0 + .milliseconds(1900))
        #expect(expired.contains(.log(.registrationExpired(a, h1))) && expired.contains(.rebuild))
        #expect(core.rebuildNow() == [.push(connection: 1, route: a)])
        #expect(core.snapshot.hosts(for: a) == [h2] && core.registrationCount == 1)

        // Taken back (ttl 0) before it runs out; taking back an unknown host is fine and changes nothing.
        let gone = core.register(request(a, h2, ttlMs: 0), from: 9, now: t0 + .seconds(2))
        #expect(try registerReply(gone)?.ok == true && gone.contains(.log(.deregistered(a, h2))))
        #expect(core.rebuildNow() == [.push(connection: 1, route: a)])
        #expect(core.snapshot.hosts(for: a).isEmpty && core.registrationCount == 0)
        let unknown = core.register(request(a, h2, ttlMs: 0), from: 9, now: t0 + .seconds(2))
        #expect(try registerReply(unknown)?.ok == true && !unknown.contains(.rebuild))
    }

    @Test("a database reload keeps the registered hosts")
    func reloadKeepsRegistrations() {
        var core = core()
        _ = core.register(request(a, h2, ttlMs: 60_000), from: 9, now: t0)
        _ = core.rebuildNow()
        _ = load(&core, version: 1, [RouteEntry(key: a, host: h1)])
        #expect(core.snapshot.hosts(for: a) == [h1, h2])
        _ = load(&core, version: 2, [])
        #expect(core.snapshot.hosts(for: a) == [h2])
    }

    @Test("refusals: a bad host, a ttl above the limit, a full table; each with a reason, nothing changes")
    func refusals() throws {
        var core = core(maxRegistrations: 1, maxTTL: .seconds(10))
        var badPort = request(a, h1, ttlMs: 1000)
        badPort.port = 70_000
        let refusedPort = core.register(badPort, from: 4, now: t0)
        #expect(try registerReply(refusedPort)?.reason.contains("bad host") == true)
        #expect(refusedPort.contains { if case .log(.registrationRefused(4, _)) = $0 { true } else { false } })
        let zero = core.register(request(a, Host(ip: 0, port: 80), ttlMs: 1000), from: 4, now: t0)
        #expect(try registerReply(zero)?.reason.contains("bad host") == true)
        let long = core.register(request(a, h1, ttlMs: 10_001), from: 4, now: t0)
        #expect(try registerReply(long)?.reason.contains("above the limit") == true)
        #expect(try registerReply(core.register(request(a, h1, ttlMs: 10_000), from: 4, now: t0))?.ok == true)
        let full = core.register(request(b, h2, ttlMs: 1000), from: 4, now: t0)
        #expect(try registerReply(full)?.reason.contains("limit of 1 registrations") == true)
        #expect(try registerReply(full)?.ok == false && !full.contains(.rebuild))
        // A refresh of the one registered host is not refused by the full table.
        #expect(try registerReply(core.register(request(a, h1, ttlMs: 1000), from: 4, now: t0))?.ok == true)
        #expect(core.registrationCount == 1)
    }

    @Test("the rebuild request is given once until it is taken; a change after taking it asks again")
    func rebuildCoalescing() {
        var core = core()
        #expect(core.databaseLoaded(version: 1, entries: [], changed: []) == [.rebuild])
        #expect(core.databaseLoaded(version: 2, entries: [], changed: []).isEmpty)
        _ = core.takeRebuild()
        #expect(core.databaseLoaded(version: 3, entries: [], changed: []) == [.rebuild])
        #expect(core.reloads == 3)
    }
}
