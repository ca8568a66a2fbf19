import LarsProtocol
import LoadBalanceAgent
import LoadBalancing
import Testing

/// The agent's logic without sockets: a core, a mock clock (a plain number of nanoseconds the test advances), and
/// the actions each input returns.
@Suite("Agent core (no sockets, mock clock)")
struct AgentCoreTests {
    typealias Core = AgentCore<Int>
    typealias Action = Core.Action

    /// A core with a clock and the action buffer the shell would reuse.
    struct Harness {
        var core: Core
        var now: UInt64 = 1_000_000_000
        var actions: [Action] = []

        init(_ configure: (inout AgentConfiguration) -> Void = { _ in }) {
            var configuration = AgentConfiguration(caller: 4242)
            configure(&configuration)
            core = Core(configuration: configuration)
        }

        mutating func advance(_ d: Duration) { now += d.nanosecondsForTests }

        /// Runs one input and returns the actions it appended.
        mutating func run(_ input: (inout Core, UInt64, inout [Action]) -> Void) -> [Action] {
            actions.removeAll(keepingCapacity: true)
            input(&core, now, &actions)
            return actions
        }

        mutating func getHost(_ key: RouteKey, seq: UInt32 = 1, by hashedKey: UInt64? = nil, peer: Int = 7,
                              source: UInt32 = Harness.loopback) -> [Action]
        {
            run { $0.getHost(seq: seq, modid: key.modid, cmdid: key.cmdid, key: hashedKey, from: peer,
                             source: source, now: $1, actions: &$2) }
        }

        static let loopback: UInt32 = 0x7F00_0001

        /// The answer of one GetHost (asserting there is exactly one).
        mutating func answer(_ key: RouteKey, by hashedKey: UInt64? = nil) -> Lars_GetHostResponse? {
            let replies = getHost(key, by: hashedKey).compactMap(\.hostReply)
            return replies.count == 1 ? replies[0] : nil
        }

        mutating func arrive(_ key: RouteKey, _ hosts: [Host]) -> [Action] {
            run { $0.routeArrived(Self.route(key, hosts), now: $1, actions: &$2) }
        }

        mutating func report(_ key: RouteKey, _ host: Host, success: Bool) {
            var request = Lars_ReportRequest()
            request.modid = key.modid
            request.cmdid = key.cmdid
            request.host = Lars_HostInfo(host)
            request.retcode = success ? 0 : 1
            _ = run { $0.report(request, source: Harness.loopback, now: $1, actions: &$2) }
        }

        static func route(_ key: RouteKey, _ hosts: [Host]) -> Lars_GetRouteResponse {
            var response = Lars_GetRouteResponse()
            response.modid = key.modid
            response.cmdid = key.cmdid
            response.host = hosts.map { Lars_HostInfo($0) }
            return response
        }
    }

    @Test("a new module: NOEXIST, one route request; hosts once the route arrives")
    func noexistUntilTheRouteArrives() {
        var h = Harness()
        let first = h.getHost(route12, seq: 9)
        #expect(first.compactMap(\.routeRequest) == [RouteKey(modid: 1, cmdid: 2)])
        #expect(first.compactMap(\.hostReply).map(\.retcode) == [LarsReturnCode.notExist])
        #expect(first.compactMap(\.hostReply).first?.seq == 9)
        #expect(first.last?.peer == 7, "the answer goes to the peer that asked, after the route request")
        // Asked again before the answer: NOEXIST, and no second request to the name service.
        h.advance(.milliseconds(100))
        let second = h.getHost(route12)
        #expect(second.compactMap(\.routeRequest).isEmpty)
        #expect(second.compactMap(\.hostReply).map(\.retcode) == [LarsReturnCode.notExist])
        #expect(h.core.statistics.notExistAnswers == 2)

        _ = h.arrive(route12, [h1, h2])
        var seen: Set<Host> = []
        for _ in 0..<4 {
            let answer = h.answer(route12)
            #expect(answer?.retcode == LarsReturnCode.success)
            if let info = answer?.host, let host = Host(info) { seen.insert(host) }
        }
        #expect(seen == [h1, h2])
        #expect(h.core.statistics.getHostRequests == 6)
        #expect(h.core.statistics.notExistAnswers == 2)
    }

    @Test("GetHost by key passes a host the route says is full over, OVERLOAD when all are; no loads: none full")
    func keyedPickSkipsFullHosts() {
        var h = Harness()
        _ = h.getHost(route12)
        let key = BoundedLoadRing.hash(Array("movie".utf8))
        func arrive(full: Set<Host>) {
            var response = Harness.route(route12, [h1, h2])
            for i in response.host.indices {
                response.host[i].load = full.contains(Host(response.host[i])!) ? 3 : 1
                response.host[i].capacity = 3
            }
            _ = h.run { $0.routeArrived(response, now: $1, actions: &$2) }
        }
        func answer() -> (Int32?, Host?) {
            let reply = h.answer(route12, by: key)
            if let reply, reply.retcode == LarsReturnCode.success, let host = Host(reply.host) {
                h.report(route12, host, success: true)
                return (reply.retcode, host)
            }
            return (reply?.retcode, nil)
        }
        arrive(full: [])
        let (_, owner) = answer()
        let other = owner == h1 ? h2 : h1
        #expect(owner != nil && answer().1 == owner)
        arrive(full: [owner!])
        #expect((0..<5).allSatisfy { _ in answer().1 == other })
        arrive(full: [h1, h2])
        #expect(answer().0 == LarsReturnCode.overload)
        _ = h.arrive(route12, [h1, h2])
        #expect(answer().1 == owner, "no loads in the route: nobody is full")
    }

    @Test("no answer from the name service: asked again after routeRetryInterval, not before")
    func retryWhileWaiting() {
        var h = Harness { $0.routeRetryInterval = .milliseconds(200) }
        _ = h.getHost(route12)
        h.advance(.milliseconds(150))
        #expect(h.run { $0.refreshRoutes(now: $1, actions: &$2) }.compactMap(\.routeRequest).isEmpty)
        h.advance(.milliseconds(50))
        #expect(h.run { $0.refreshRoutes(now: $1, actions: &$2) }.compactMap(\.routeRequest) == [route12])
    }

    @Test("a route is asked for again after update_timeout, once")
    func refreshAfterUpdateTimeout() {
        var h = Harness { $0.balancer.updateTimeout = .seconds(15) }
        _ = h.getHost(route12)
        _ = h.arrive(route12, [h1])
        h.advance(.seconds(14))
        #expect(h.run { $0.refreshRoutes(now: $1, actions: &$2) }.compactMap(\.routeRequest).isEmpty)
        h.advance(.seconds(1))
        #expect(h.run { $0.refreshRoutes(now: $1, actions: &$2) }.compactMap(\.routeRequest) == [route12])
        // Asked, not answered yet: not asked again on the next tick.
        h.advance(.seconds(1))
        #expect(h.run { $0.refreshRoutes(now: $1, actions: &$2) }.compactMap(\.routeRequest).isEmpty)
        // The answer restarts the clock.
        _ = h.arrive(route12, [h1])
        h.advance(.seconds(14))
        #expect(h.run { $0.refreshRoutes(now: $1, actions: &$2) }.compactMap(\.routeRequest).isEmpty)
    }

    @Test("connected to the name service: every module is asked for; an outage is logged once")
    func nameServiceConnectedAndLost() {
        var h = Harness()
        _ = h.getHost(route12)
        _ = h.getHost(RouteKey(modid: 3, cmdid: 4))
        let connected = h.run { $0.nameServiceConnected(now: $1, actions: &$2) }
        #expect(Set(connected.compactMap(\.routeRequest)) == [route12, RouteKey(modid: 3, cmdid: 4)])
        #expect(connected.compactMap(\.event).isEmpty)
        #expect(h.run { $0.nameServiceLost(actions: &$2) }.compactMap(\.event) == [.nameServiceUnreachable])
        #expect(h.run { $0.nameServiceLost(actions: &$2) }.isEmpty)
        let back = h.run { $0.nameServiceConnected(now: $1, actions: &$2) }
        #expect(back.compactMap(\.event) == [.nameServiceReachable])
    }

    @Test("an overloaded host is probed every probe_num-th request")
    func overloadedHostProbing() {
        var h = Harness { $0.balancer.probeNum = 10 }
        _ = h.getHost(route12)
        _ = h.arrive(route12, [h1, h2])
        for _ in 0..<10 { h.report(route12, h1, success: false) }  // contin_err_limit: h1 is overloaded
        #expect(h.core.balancer(for: route12)?.overloadedHosts == [h1])
        var picks: [Host] = []
        for _ in 0..<20 {
            if let info = h.answer(route12)?.host, let host = Host(info) { picks.append(host) }
        }
        #expect(picks.count == 20)
        #expect(picks.filter { $0 == h1 }.count == 2, "\(picks)")
        #expect(picks[9] == h1 && picks[19] == h1)
        // Both overloaded: OVERLOAD, except the probes.
        for _ in 0..<10 { h.report(route12, h2, success: false) }
        let codes = (0..<10).compactMap { _ in h.answer(route12)?.retcode }
        #expect(codes.filter { $0 == LarsReturnCode.overload }.count == 9)
        #expect(codes.filter { $0 == LarsReturnCode.success }.count == 1)
    }

    @Test("reports: one per module per flush with calls, every host with its window's running counts")
    func reportThrottling() {
        var h = Harness()
        let other = RouteKey(modid: 5, cmdid: 5)
        for key in [route12, other] {
            _ = h.getHost(key)
            _ = h.arrive(key, [h1, h2])
        }
        for i in 0..<300 {
            h.report(route12, h1, success: true)
            h.report(route12, h2, success: i % 20 != 0)  // 5% errors: h2 stays idle, one window throughout
        }
        h.report(other, h1, success: true)
        let flushed = h.run { $0.flushReports(timestamp: 1_700_000_000, actions: &$2) }
        let reports = flushed.compactMap(\.report)
        #expect(reports.count == 2)
        #expect(Set(reports.map { RouteKey(modid: $0.modid, cmdid: $0.cmdid) }) == [route12, other])
        let r12 = reports.first { $0.modid == 1 }!
        #expect(r12.caller == 4242 && r12.ts == 1_700_000_000)
        let byHost = Dictionary(uniqueKeysWithValues: r12.results.map { (Host(wireIP: $0.ip, wirePort: $0.port)!, $0) })
        #expect(byHost[h1]?.succ == 300 && byHost[h1]?.err == 0)
        #expect(byHost[h2]?.succ == 285 && byHost[h2]?.err == 15)
        // Every host of the module, those without calls too.
        let rOther = reports.first { $0.modid == 5 }!
        #expect(rOther.results.map { Host(wireIP: $0.ip, wirePort: $0.port)! } == [h1, h2])
        #expect(rOther.results.map(\.succ) == [1, 0] && rOther.results.map(\.err) == [0, 0])
        #expect(h.core.statistics.reportsSent == 2 && h.core.statistics.reportRequests == 601)
        // Nothing new: nothing sent.
        #expect(h.run { $0.flushReports(timestamp: 1_700_000_001, actions: &$2) }.isEmpty)
        // More calls in the same window: the counts go on from where they were.
        h.report(route12, h1, success: true)
        let grown = h.run { $0.flushReports(timestamp: 1_700_000_002, actions: &$2) }.compactMap(\.report)
        #expect(grown.count == 1 && grown.first?.results.first { $0.ip == h1.wireIP }?.succ == 301)
        // After the idle window (15 s) the next call starts a new one: the counts restart.
        h.advance(.seconds(16))
        h.report(route12, h1, success: true)
        h.report(route12, h1, success: false)
        let restarted = h.run { $0.flushReports(timestamp: 1_700_000_003, actions: &$2) }.compactMap(\.report)
        let h1Line = restarted.first?.results.first { $0.ip == h1.wireIP }
        #expect(h1Line?.succ == 0 && h1Line?.err == 1)
        // h2 had no call since: its window is checked when one comes (as Lars's), so it still reports the old one.
        #expect(restarted.first?.results.first { $0.ip == h2.wireIP }.map { $0.succ == 285 && $0.err == 15 } == true)
        // Reports for a module the agent does not know are ignored.
        h.report(RouteKey(modid: 8, cmdid: 8), h1, success: true)
        #expect(h.run { $0.flushReports(timestamp: 1_700_000_002, actions: &$2) }.isEmpty)
    }

    @Test("a module without hosts is forgotten after emptyModuleTimeout unless asked for; one with hosts stays")
    func emptyModuleForgetting() {
        var h = Harness { $0.emptyModuleTimeout = .seconds(60) }
        let unknown = RouteKey(modid: 9, cmdid: 9)
        for key in [route12, unknown] { _ = h.getHost(key) }
        _ = h.arrive(route12, [h1])
        _ = h.arrive(unknown, [])
        // Asked for every 30 s: kept.
        for _ in 0..<4 {
            h.advance(.seconds(30))
            #expect(h.answer(unknown)?.retcode == LarsReturnCode.notExist)
            _ = h.run { $0.refreshRoutes(now: $1, actions: &$2) }
            #expect(h.core.balancer(for: unknown) != nil)
        }
        // Not asked for 60 s: forgotten (logged once); the module with hosts stays however long it is not used.
        h.advance(.seconds(60))
        let refreshed = h.run { $0.refreshRoutes(now: $1, actions: &$2) }
        #expect(refreshed.compactMap(\.event) == [.forgotEmptyModules(count: 1)])
        #expect(h.core.balancer(for: unknown) == nil)
        #expect(h.core.balancer(for: route12)?.hosts == [h1])
        // Asked again: fetched again.
        #expect(h.getHost(unknown).compactMap(\.routeRequest) == [unknown])
    }

    @Test("at maxModules a new module evicts the oldest one that never had hosts; with hosts everywhere: refused")
    func moduleLimit() {
        var h = Harness { $0.maxModules = 3 }
        let keys = (Int32(20)...Int32(25)).map { RouteKey(modid: $0, cmdid: 1) }
        for key in keys[0..<3] { _ = h.getHost(key) }
        _ = h.arrive(keys[1], [h1])  // 21 has hosts: never evicted
        _ = h.arrive(keys[0], [])  // 20 the name service does not know
        // 23 evicts 20 (the oldest that never had hosts), 24 evicts 22 (21 is skipped: it has hosts).
        #expect(h.getHost(keys[3]).compactMap(\.routeRequest) == [keys[3]])
        #expect(h.core.balancer(for: keys[0]) == nil && h.core.balancer(for: keys[1]) != nil)
        #expect(h.getHost(keys[4]).compactMap(\.routeRequest) == [keys[4]])
        #expect(h.core.balancer(for: keys[2]) == nil)
        #expect(h.core.statistics.modulesEvicted == 2 && h.core.statistics.modules == 3)
        // Every module with hosts: the next new one is refused, answered NOEXIST, logged once per episode.
        _ = h.arrive(keys[3], [h2])
        _ = h.arrive(keys[4], [h3])
        let refused = h.getHost(keys[5])
        #expect(refused.compactMap(\.routeRequest).isEmpty)
        #expect(refused.compactMap(\.event) == [.moduleLimitReached])
        #expect(refused.compactMap(\.hostReply).map(\.retcode) == [LarsReturnCode.notExist])
        #expect(h.getHost(RouteKey(modid: 26, cmdid: 1)).compactMap(\.event).isEmpty, "logged once")
        #expect(h.core.balancer(for: keys[5]) == nil)
        #expect(h.core.statistics.modules == 3 && h.core.statistics.newModulesRefused == 2)
    }

    @Test("GetHost by key: answered as id 101, a key sticks to its host, keys spread")
    func getHostByKey() {
        var h = Harness()
        _ = h.getHost(route12)
        _ = h.arrive(route12, [h1, h2, h3])
        var owners: Set<Host> = []
        for i in 0..<60 {
            let key = BoundedLoadRing.hash(Array("movie-\(i)".utf8))
            var hosts: Set<Host> = []
            for _ in 0..<3 {
                let actions = h.getHost(route12, by: key)
                #expect(actions.count == 1)
                guard case .replyHost(let response, let byKey, _) = actions[0], let host = Host(response.host) else {
                    Issue.record("no host for movie-\(i)")
                    continue
                }
                #expect(byKey)
                hosts.insert(host)
                h.report(route12, host, success: true)
            }
            #expect(hosts.count == 1, "movie-\(i): \(hosts)")
            owners.formUnion(hosts)
        }
        #expect(owners == [h1, h2, h3])
        #expect(h.core.statistics.getHostByKeyRequests == 180)
        // Plain GetHost answers are not by key.
        guard case .replyHost(_, let byKey, _) = h.getHost(route12)[0] else { Issue.record("no answer"); return }
        #expect(!byKey)
    }

    @Test("the cache snapshot: only after a route with hosts changed, once per burst, without empty modules")
    func cacheSnapshotOnChangeOnly() {
        var h = Harness { $0.routeCacheFile = "/unused/in/the/core.json" }
        #expect(h.core.takeCacheSnapshot() == nil, "nothing changed")
        _ = h.getHost(route12)
        let first = h.arrive(route12, [h2, h1])
        #expect(first.compactMap(\.event) == [.routeUpdated(route12, hostCount: 2)])
        #expect(h.arrive(route12, [h1, h2]).isEmpty, "same hosts in another order: nothing to do")
        #expect(h.core.takeCacheSnapshot() == [route12: CachedRoute(hosts: [h1, h2])])
        #expect(h.core.takeCacheSnapshot() == nil, "taken: clean until the next change")
        // Modules the name service does not know: neither logged nor a reason to write.
        for modid in Int32(500)..<Int32(600) {
            let key = RouteKey(modid: modid, cmdid: 1)
            _ = h.getHost(key)
            #expect(h.arrive(key, []).isEmpty)
        }
        #expect(h.core.takeCacheSnapshot() == nil)
        // A burst of changes is one snapshot, with the last hosts of each route.
        _ = h.arrive(route12, [h1, h3])
        _ = h.arrive(route12, [h3])
        #expect(h.core.takeCacheSnapshot() == [route12: CachedRoute(hosts: [h3])])
        // Without a cache file there is no snapshot, but the change is still logged.
        var bare = Harness()
        _ = bare.getHost(route12)
        #expect(bare.arrive(route12, [h1]).compactMap(\.event).count == 1)
        #expect(bare.core.takeCacheSnapshot() == nil)
    }

    @Test("routes from the cache file serve at once; GetRoute answers the known hosts to the asking peer")
    func cachedRoutesAndGetRoute() {
        var h = Harness()
        h.core.loadCachedRoutes([route12: [h1, h2]], now: h.now)
        #expect(h.answer(route12)?.retcode == LarsReturnCode.success)
        var request = Lars_GetRouteRequest()
        request.modid = 1
        request.cmdid = 2
        let actions = h.run { $0.getRoute(request, from: 11, source: Harness.loopback, now: $1, actions: &$2) }
        guard actions.count == 1, case .replyRoute(let response, let peer) = actions[0] else {
            Issue.record("\(actions)")
            return
        }
        #expect(peer == 11)
        #expect(Set(response.host.compactMap { Host($0) }) == [h1, h2])
        // A route loaded from the file is asked for again on the first refresh (it never came from the service).
        h.advance(.seconds(1))
        #expect(h.run { $0.refreshRoutes(now: $1, actions: &$2) }.compactMap(\.routeRequest) == [route12])
    }
}

extension AgentCore.Action {
    var hostReply: Lars_GetHostResponse? {
        if case .replyHost(let response, _, _) = self { return response }
        return nil
    }
    var routeRequest: RouteKey? {
        if case .askNameService(let request) = self { return RouteKey(modid: request.modid, cmdid: request.cmdid) }
        return nil
    }
    var report: Lars_ReportStatusRequest? {
        if case .sendReport(let request) = self { return request }
        return nil
    }
    var event: AgentEvent? {
        if case .log(let event) = self { return event }
        return nil
    }
    var peer: Peer? {
        switch self {
        case .replyHost(_, _, let peer), .replyRoute(_, let peer): return peer
        default: return nil
        }
    }
}

extension Duration {
    var nanosecondsForTests: UInt64 {
        let (seconds, attoseconds) = components
        return UInt64(seconds) * 1_000_000_000 + UInt64(attoseconds / 1_000_000_000)
    }
}
