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

    /// Registers from a source (default 10.9.9.9).
    func register(_ core: inout NameServiceCore, _ request: Switchyard_Lb_RegisterHostRequest,
                  from connection: UInt64 = 9, source: UInt32 = 0x0A09_0909, at now: ContinuousClock.Instant)
        -> [Action]
    {
        core.register(request, from: connection, source: source, now: now)
    }

    @Test("registration: added and pushed at once (no rebuild), refreshed (nothing), expired at its ttl, taken back")
    func registrationLifecycle() throws {
        var core = core()
        _ = core.getRoute(a, from: 1)
        let added = register(&core, request(a, h1, ttlMs: 1000), at: t0)
        #expect(try registerReply(added)?.ok == true)
        #expect(added.contains(.log(.registered(a, h1, ttlMs: 1000))) && !added.contains(.rebuild))
        #expect(pushes(added) == ["1 1/1"])
        #expect(core.snapshot.hosts(for: a) == [h1])
        let second = register(&core, request(a, h2, ttlMs: 5000), at: t0)
        #expect(pushes(second) == ["1 1/1"])
        #expect(core.registrationCount == 2)
        #expect(core.snapshot.hosts(for: a) == [h1, h2])
        #expect(core.nextExpiry == t0 + .seconds(1))

        // A heartbeat before the ttl runs out moves the expiry; nothing is pushed.
        let refreshed = register(&core, request(a, h1, ttlMs: 1000), at: t0 + .milliseconds(900))
        #expect(try registerReply(refreshed)?.ok == true && pushes(refreshed).isEmpty)
        #expect(core.tick(now: t0 + .milliseconds(1500)).isEmpty, "h1 runs until 1.9 s now")
        let expired = core.tick(now: t0 + .milliseconds(1900))
        #expect(expired.contains(.log(.registrationExpired(a, h1))) && pushes(expired) == ["1 1/1"])
        #expect(core.snapshot.hosts(for: a) == [h2] && core.registrationCount == 1)

        // Taken back (ttl 0) before it runs out; taking back an unknown host is fine and changes nothing.
        let gone = register(&core, request(a, h2, ttlMs: 0), at: t0 + .seconds(2))
        #expect(try registerReply(gone)?.ok == true && gone.contains(.log(.deregistered(a, h2))))
        #expect(pushes(gone) == ["1 1/1"])
        #expect(core.snapshot.hosts(for: a).isEmpty && core.registrationCount == 0)
        let unknown = register(&core, request(a, h2, ttlMs: 0), at: t0 + .seconds(2))
        #expect(try registerReply(unknown)?.ok == true && pushes(unknown).isEmpty)
        #expect(core.tick(now: t0 + .seconds(10)).isEmpty, "the stale deadlines expire nothing")
        #expect(core.nextExpiry == nil)
    }

    /// The loads of the GetRouteResponse `body` (hosts that carry one).
    func loads(_ body: [UInt8]) throws -> [Host: HostLoad] {
        var out: [Host: HostLoad] = [:]
        for info in try Lars_GetRouteResponse(serializedBytes: body).host where info.hasLoad && info.hasCapacity {
            out[Host(wireIP: info.ip, wirePort: info.port)!] = HostLoad(load: info.load, capacity: info.capacity)
        }
        return out
    }

    func request(_ key: RouteKey, _ host: Host, ttlMs: UInt32, load: UInt32, capacity: UInt32)
        -> Switchyard_Lb_RegisterHostRequest
    {
        var r = request(key, host, ttlMs: ttlMs)
        r.load = load
        r.capacity = capacity
        return r
    }

    @Test("a registered host's load is served with the route; full (or room again) is pushed, a count is not")
    func registeredLoads() throws {
        var core = core()
        _ = core.getRoute(a, from: 1)
        let added = register(&core, request(a, h1, ttlMs: 1000, load: 0, capacity: 2), at: t0)
        #expect(pushes(added) == ["1 1/1"])
        _ = register(&core, request(a, h2, ttlMs: 1000), at: t0)
        #expect(try loads(core.responseBody(for: a)) == [h1: HostLoad(load: 0, capacity: 2)],
                "h2 sent no load: its HostInfo carries none")

        // One more viewer, not full: the served route has the count, but nothing is pushed for it.
        let counted = register(&core, request(a, h1, ttlMs: 1000, load: 1, capacity: 2), at: t0 + .milliseconds(300))
        #expect(try registerReply(counted)?.ok == true && pushes(counted).isEmpty)
        #expect(try loads(core.servedBody(for: a).body)[h1] == HostLoad(load: 1, capacity: 2))

        // Full: pushed at once, and logged.
        let full = register(&core, request(a, h1, ttlMs: 1000, load: 2, capacity: 2), at: t0 + .milliseconds(400))
        #expect(pushes(full) == ["1 1/1"])
        #expect(full.contains(.log(.loadChanged(a, h1, load: HostLoad(load: 2, capacity: 2)))))
        #expect(try loads(core.servedBody(for: a).body)[h1]?.isFull == true)
        // Still full, heartbeat after heartbeat: no push.
        #expect(pushes(register(&core, request(a, h1, ttlMs: 1000, load: 2, capacity: 2), at: t0 + .milliseconds(500)))
            .isEmpty)
        // Room again: pushed.
        let room = register(&core, request(a, h1, ttlMs: 1000, load: 1, capacity: 2), at: t0 + .milliseconds(600))
        #expect(pushes(room) == ["1 1/1"])
        // A heartbeat without a load (an older server) drops it: nothing full any more, and it is pushed only when it
        // was full.
        let none = register(&core, request(a, h1, ttlMs: 1000), at: t0 + .milliseconds(700))
        #expect(pushes(none).isEmpty)
        #expect(try loads(core.servedBody(for: a).body).isEmpty)
        // Taken back: its load goes with it.
        _ = register(&core, request(a, h1, ttlMs: 1000, load: 5, capacity: 5), at: t0 + .milliseconds(800))
        _ = register(&core, request(a, h1, ttlMs: 0), at: t0 + .milliseconds(900))
        #expect(try loads(core.servedBody(for: a).body).isEmpty && core.snapshot.hosts(for: a) == [h2])
    }

    /// The weights of the GetRouteResponse `body` (hosts that carry one).
    func weights(_ body: [UInt8]) throws -> [Host: UInt32] {
        var out: [Host: UInt32] = [:]
        for info in try Lars_GetRouteResponse(serializedBytes: body).host where info.hasWeight {
            out[Host(wireIP: info.ip, wirePort: info.port)!] = info.weight
        }
        return out
    }

    @Test("weights: RouteData's are served (1 left out), a registration's own wins and is pushed when it changes")
    func weightsServed() throws {
        var core = core()
        _ = core.getRoute(a, from: 1)
        let changed = load(&core, version: 1, [RouteEntry(key: a, host: h1, weight: 5), RouteEntry(key: a, host: h2)])
        #expect(pushes(changed) == ["1 1/1"])
        #expect(try weights(core.responseBody(for: a)) == [h1: 5])
        // Only a weight changed in the database: a change, pushed.
        let reweighted = load(&core, version: 2, [RouteEntry(key: a, host: h1, weight: 2),
                                                  RouteEntry(key: a, host: h2)])
        #expect(pushes(reweighted) == ["1 1/1"])
        #expect(try weights(core.responseBody(for: a)) == [h1: 2])
        // A registration with a weight: served (and its own weight wins over the row's), pushed when it changes.
        var heavy = request(a, h1, ttlMs: 1000)
        heavy.weight = 7
        #expect(pushes(register(&core, heavy, at: t0)) == ["1 1/1"])
        #expect(try weights(core.servedBody(for: a).body) == [h1: 7])
        #expect(pushes(register(&core, heavy, at: t0 + .milliseconds(100))).isEmpty, "a heartbeat: no push")
        heavy.weight = 0
        #expect(pushes(register(&core, heavy, at: t0 + .milliseconds(200))) == ["1 1/1"])
        #expect(try weights(core.servedBody(for: a).body) == [h1: 0])
        // Above the max: refused with a reason, the registration kept as it was.
        heavy.weight = HostWeight.max + 1
        let refused = register(&core, heavy, at: t0 + .milliseconds(300))
        #expect(try registerReply(refused)?.ok == false)
        #expect(try registerReply(refused)?.reason.contains("weight") == true)
        #expect(try weights(core.servedBody(for: a).body) == [h1: 0])
    }

    @Test("the Lars frame cap counts the load fields: the hosts that fit are those whose encoding fits")
    func frameCapWithLoads() throws {
        var response = Lars_GetRouteResponse()
        response.modid = 400
        response.cmdid = 1
        response.host = (0..<300).map { i in
            var info = Lars_HostInfo(Host(ip: 0x0A00_0000 + UInt32(i), port: UInt16(1000 + i)))
            if i % 3 != 0 {
                info.load = UInt32(i % 5)  // 0 is written too: the field has presence
                info.capacity = UInt32(i * 1000)
            }
            if i % 4 == 1 { info.weight = UInt32(i * 37) }  // the weight field counts too
            return info
        }
        for maxBody in [0, 10, 100, 1000, 2500, 4000, 100_000] {
            let fitting = response.hostCountFitting(maxBody: maxBody)
            var cut = response
            cut.host = Array(response.host.prefix(fitting))
            #expect(try (cut.serializedBytes() as [UInt8]).count <= maxBody || fitting == 0)
            if fitting < response.host.count {
                cut.host = Array(response.host.prefix(fitting + 1))
                #expect(try (cut.serializedBytes() as [UInt8]).count > maxBody, "\(fitting + 1) hosts fit in \(maxBody) bytes")
            }
        }
    }

    @Test("expiry: in deadline order, only what ran out, refreshed hosts kept; the heap stays bounded by heartbeats")
    func expiryOrder() {
        var core = core(maxRegistrations: 1000)
        let hosts = (1...50).map { Host(ip: 0x0A00_0000 + UInt32($0), port: 80) }
        // Host i runs out at (51 - i) seconds: registered in the reverse order of their deadlines.
        for (i, host) in hosts.enumerated() {
            _ = register(&core, request(a, host, ttlMs: UInt32(51 - (i + 1)) * 1000), at: t0)
        }
        var order: [Host] = []
        for second in 1...50 {
            for case .log(.registrationExpired(_, let host)) in core.tick(now: t0 + .seconds(second)) {
                order.append(host)
            }
            #expect(core.registrationCount == 50 - second)
        }
        #expect(order == hosts.reversed())
        // A thousand heartbeats of one host leave the heap within about twice the registrations.
        _ = register(&core, request(b, h1, ttlMs: 60_000), at: t0)
        for beat in 1...3000 {
            _ = register(&core, request(b, h1, ttlMs: 60_000), at: t0 + .milliseconds(beat))
        }
        #expect(core.deadlineCount <= 2 * core.registrationCount + 1025)
        #expect(core.tick(now: t0 + .seconds(60)).isEmpty, "refreshed at 3 s: runs until 63 s")
        #expect(core.tick(now: t0 + .seconds(63)).contains(.log(.registrationExpired(b, h1))))
    }

    @Test("per-source and per-route limits: refused with a reason, another source and route still register")
    func perSourceAndRouteLimits() throws {
        var core = NameServiceCore(limits: NameServiceCore.Limits(NameServiceConfiguration(
            maxRegistrations: 100, maxRegistrationsPerSource: 3, maxRegistrationsPerRoute: 4)))
        let sourceA: UInt32 = 0x0A00_0001
        let sourceB: UInt32 = 0x0A00_0002
        func host(_ n: Int) -> Host { Host(ip: 0x0A01_0000 + UInt32(n), port: 80) }
        var logs = 0
        func count(_ actions: [Action]) {
            logs += actions.filter { if case .log(.registrationRefused) = $0 { true } else { false } }.count
        }
        for n in 1...3 {
            #expect(try registerReply(register(&core, request(b, host(n), ttlMs: 1000), source: sourceA, at: t0))?.ok
                == true)
        }
        for n in 4...10 {
            let refused = register(&core, request(b, host(n), ttlMs: 1000), source: sourceA, at: t0)
            #expect(try registerReply(refused)?.reason.contains("this source holds its limit of 3") == true)
            count(refused)
        }
        #expect(logs == 1, "one log line per episode")
        // A refresh of a host it holds is not refused.
        #expect(try registerReply(register(&core, request(b, host(1), ttlMs: 1000), source: sourceA, at: t0))?.ok
            == true)
        // Another source registers; the route's limit (4) stops it at the 4th host of the route.
        #expect(try registerReply(register(&core, request(b, host(20), ttlMs: 1000), source: sourceB, at: t0))?.ok
            == true)
        let routeFull = register(&core, request(b, host(21), ttlMs: 1000), source: sourceB, at: t0)
        #expect(try registerReply(routeFull)?.reason.contains("holds its limit of 4 registered hosts") == true)
        #expect(try registerReply(register(&core, request(a, host(21), ttlMs: 1000), source: sourceB, at: t0))?.ok
            == true)
        #expect(core.registrationCount == 5 && core.registrationsRefused == 8)
        // Source A's registrations run out: it may register again, and a new episode logs again.
        _ = core.tick(now: t0 + .seconds(1))
        #expect(try registerReply(register(&core, request(b, host(5), ttlMs: 60_000), source: sourceA,
                                           at: t0 + .seconds(1)))?.ok == true)
        for n in 6...9 {
            count(register(&core, request(a, host(n), ttlMs: 60_000), source: sourceA, at: t0 + .seconds(30)))
        }
        #expect(core.registrationsRefused == 10)
        #expect(logs == 2, "a refusal after a quiet time starts a new episode")
    }

    @Test("the incrementally served routes equal a full rebuild from the database and all registrations")
    func incrementalEqualsFullRebuild() throws {
        var core = core(maxRegistrations: 10_000)
        var generator = SystemRandomNumberGenerator()
        let keys = (1...8).map { RouteKey(modid: 77, cmdid: Int32($0)) }
        let database = (0..<40).map { i in
            RouteEntry(key: keys[i % 8], host: Host(ip: 0x0B00_0000 + UInt32(i % 13), port: 7000))
        }
        _ = load(&core, version: 1, database)
        var live: [RouteKey: Set<Host>] = [:]
        var now = t0
        for step in 0..<2000 {
            now = now + .milliseconds(5)
            let key = keys.randomElement(using: &generator)!
            let host = Host(ip: 0x0B00_0000 + UInt32.random(in: 0..<30, using: &generator), port: 7000)
            let ttl: UInt32 = step % 5 == 0 ? 0 : UInt32.random(in: 10...400, using: &generator)
            _ = register(&core, request(key, host, ttlMs: ttl), source: UInt32(step % 7), at: now)
            if ttl == 0 { live[key]?.remove(host) } else { live[key, default: []].insert(host) }
            for case .log(.registrationExpired(let k, let h)) in core.tick(now: now) { live[k]?.remove(h) }
            if step == 1000 { _ = load(&core, version: 2, Array(database.prefix(20))) }
        }
        #expect(core.snapshot.version == 2)
        let entries = Array(database.prefix(20))
            + live.flatMap { key, hosts in hosts.map { RouteEntry(key: key, host: $0) } }
        let full = RouteSnapshot(version: 2, entries: entries)
        for key in keys {
            #expect(core.snapshot.hosts(for: key) == full.hosts(for: key), "\(key)")
            #expect(core.snapshot.responseBody(for: key) == full.responseBody(for: key), "\(key)")
        }
        #expect(core.snapshot.routes == full.routes)
        #expect(core.registrationCount == live.values.reduce(0) { $0 + $1.count })
    }

    @Test("a registration's cost does not grow with the registrations held: only its route is merged, once per read")
    func registrationCostIndependentOfHeld() throws {
        var core = core(maxRegistrations: 20_000)
        for n in 0..<10_000 {
            let key = RouteKey(modid: 900 + Int32(n / 500), cmdid: 1)
            _ = register(&core, request(key, Host(ip: 0x0C00_0000 + UInt32(n), port: 80), ttlMs: 60_000),
                         source: UInt32(n / 1000), at: t0)
        }
        #expect(core.routeMerges == 0, "nobody read a route: nothing merged or encoded")
        _ = core.getRoute(a, from: 1)
        for n in 0..<100 {
            _ = register(&core, request(a, Host(ip: 0x0D00_0000 + UInt32(n), port: 80), ttlMs: 60_000),
                         source: 77, at: t0)
        }
        #expect(core.routeMerges == 0)
        let reply = try replyHosts(core.getRoute(a, from: 2), to: 2)
        #expect(reply?.count == 100 && core.routeMerges == 1, "a burst of 100 for one route: merged once")
        _ = core.getRoute(a, from: 3)
        #expect(core.routeMerges == 1, "unchanged since: the encoded answer is reused")
        _ = register(&core, request(a, h1, ttlMs: 60_000), source: 77, at: t0)
        #expect(try replyHosts(core.getRoute(a, from: 2), to: 2)?.count == 101 && core.routeMerges == 2)
        #expect(core.registrationCount == 10_101)
    }

    @Test("a route with more hosts than fit in a Lars frame is answered with as many as fit; logged once")
    func frameCap() throws {
        var core = core(maxRegistrations: 10_000)
        _ = core.getRoute(a, from: 1)
        let hosts = (0..<8000).map { Host(ip: 0x0A00_0000 + UInt32($0), port: 9000) }
        let loaded = load(&core, version: 1, hosts.map { RouteEntry(key: a, host: $0) })
        #expect(loaded.filter { if case .log(.routeTruncated(a, 8000, _)) = $0 { true } else { false } }.count == 1)
        let body = core.responseBody(for: a)
        #expect(body.count <= LarsFrameLimit.maxBody && body.count > LarsFrameLimit.maxBody - 20)
        let served = try replyHosts(core.getRoute(a, from: 2), to: 2) ?? []
        #expect(served == Array(hosts.sorted().prefix(served.count)) && served.count > 4000)
        #expect(core.routesTruncated == 1)
        // The same route loaded again: not logged again.
        let again = load(&core, version: 2, hosts.map { RouteEntry(key: a, host: $0) })
        #expect(!again.contains { if case .log(.routeTruncated) = $0 { true } else { false } })
    }

    @Test("refusals: a bad host, a ttl above the limit, a full table; each with a reason, nothing changes")
    func refusals() throws {
        var core = core(maxRegistrations: 1, maxTTL: .seconds(10))
        var badPort = request(a, h1, ttlMs: 1000)
        badPort.port = 70_000
        let refusedPort = register(&core, badPort, from: 4, at: t0)
        #expect(try registerReply(refusedPort)?.reason.contains("bad host") == true)
        #expect(refusedPort.contains {
            if case .log(.registrationRefused(4, .badHost, _)) = $0 { true } else { false }
        })
        let zero = register(&core, request(a, Host(ip: 0, port: 80), ttlMs: 1000), from: 4, at: t0)
        #expect(try registerReply(zero)?.reason.contains("bad host") == true)
        let long = register(&core, request(a, h1, ttlMs: 10_001), from: 4, at: t0)
        #expect(try registerReply(long)?.reason.contains("above the limit") == true)
        #expect(try registerReply(register(&core, request(a, h1, ttlMs: 10_000), from: 4, at: t0))?.ok == true)
        let full = register(&core, request(b, h2, ttlMs: 1000), from: 4, at: t0)
        #expect(try registerReply(full)?.reason.contains("limit of 1 registrations") == true)
        #expect(try registerReply(full)?.ok == false && pushes(full).isEmpty)
        // A refresh of the one registered host is not refused by the full table.
        #expect(try registerReply(register(&core, request(a, h1, ttlMs: 1000), from: 4, at: t0))?.ok == true)
        #expect(core.registrationCount == 1)
    }

    @Test("a database reload keeps the registered hosts")
    func reloadKeepsRegistrations() {
        var core = core()
        _ = register(&core, request(a, h2, ttlMs: 60_000), at: t0)
        _ = load(&core, version: 1, [RouteEntry(key: a, host: h1)])
        #expect(core.snapshot.hosts(for: a) == [h1, h2])
        _ = load(&core, version: 2, [])
        #expect(core.snapshot.hosts(for: a) == [h2])
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
