import Foundation
import LarsProtocol
import LoadBalanceAgent
import LoadBalanceClient
import LoadBalancing
import Messaging
import Reactor
import TestSupport
import Testing

let h1 = LoadBalancing.Host(ip: 0x0A00_0001, port: 9000)  // 10.0.0.1:9000
let h2 = LoadBalancing.Host(ip: 0x0A00_0002, port: 9000)
let h3 = LoadBalancing.Host(ip: 0x0A00_0003, port: 9001)
let route12 = RouteKey(modid: 1, cmdid: 2)

@Suite("Load-balance agent over real sockets", .serialized)
struct AgentTests {
    @Test("a new module: NOEXIST, then hosts once the name service answered", arguments: PollerKind.allCases)
    func noexistThenSuccess(poller: PollerKind) async throws {
        let world = try AgentWorld.make(poller: poller, routes: [route12: [h1, h2]])
        defer { world.shutdown() }
        let first = try await world.client.getHost(modid: 1, cmdid: 2)
        #expect(first.retcode == LarsReturnCode.notExist && first.host == nil)
        #expect(try await eventually { try await world.client.getHost(modid: 1, cmdid: 2).isSuccess })
        var seen: Set<LoadBalancing.Host> = []
        for _ in 0..<4 { seen.insert(try await world.client.getHost(modid: 1, cmdid: 2).host!) }
        #expect(seen == [h1, h2])  // round robin over both
        #expect(Set(try await world.client.getRoute(modid: 1, cmdid: 2)) == [h1, h2])
        // A module the name service does not know stays NOEXIST.
        _ = try await world.client.getHost(modid: 9, cmdid: 9)
        try await Task.sleep(for: .milliseconds(100))
        #expect(try await world.client.getHost(modid: 9, cmdid: 9).retcode == LarsReturnCode.notExist)
    }

    @Test("a pushed route replaces the hosts: a removed host is no longer returned", arguments: PollerKind.allCases)
    func pushReplacesHosts(poller: PollerKind) async throws {
        let world = try AgentWorld.make(poller: poller, routes: [route12: [h1, h2]])
        defer { world.shutdown() }
        _ = try await world.client.getHost(modid: 1, cmdid: 2)
        #expect(try await eventually { try await world.client.getRoute(modid: 1, cmdid: 2).count == 2 })
        world.names.push(route12, [h1, h3])
        #expect(try await eventually { Set(try await world.client.getRoute(modid: 1, cmdid: 2)) == [h1, h3] })
        var seen: Set<LoadBalancing.Host> = []
        for _ in 0..<20 { seen.insert(try await world.client.getHost(modid: 1, cmdid: 2).host!) }
        #expect(seen == [h1, h3])
        let balancer = await world.agent.balancerSnapshot(modid: 1, cmdid: 2)
        #expect(balancer?.state(of: h2) == nil)
    }

    @Test("a module the name service does not know is forgotten once nobody asks for it",
          arguments: PollerKind.allCases)
    func unknownModuleForgotten(poller: PollerKind) async throws {
        let world = try AgentWorld.make(poller: poller, routes: [route12: [h1]]) {
            $0.emptyModuleTimeout = .seconds(3)
            $0.routeRetryInterval = .milliseconds(50)
        }
        defer { world.shutdown() }
        #expect(try await eventually { try await world.client.getHost(modid: 1, cmdid: 2).isSuccess })
        // The name service answers 9/9 with no hosts: NOEXIST. Asked for over twice the timeout, it is kept. (The
        // timeout is long beside the asks' 100 ms: on a loaded machine one ask can wait a second for a thread.)
        let start = ContinuousClock.now
        while ContinuousClock.now - start < .milliseconds(6500) {
            #expect(try await world.client.getHost(modid: 9, cmdid: 9).retcode == LarsReturnCode.notExist)
            try await Task.sleep(for: .milliseconds(100))
        }
        #expect(await world.agent.balancerSnapshot(modid: 9, cmdid: 9) != nil)
        // Nobody asks for 9/9 any more: it goes. The module with hosts stays, however long it is not used.
        #expect(await eventually { await world.agent.balancerSnapshot(modid: 9, cmdid: 9) == nil })
        #expect(await world.agent.balancerSnapshot(modid: 1, cmdid: 2)?.hosts == [h1])
        #expect(try await world.client.getHost(modid: 1, cmdid: 2).host == h1)
        // Asked again, it is fetched again.
        #expect(try await world.client.getHost(modid: 9, cmdid: 9).retcode == LarsReturnCode.notExist)
        #expect(await world.agent.balancerSnapshot(modid: 9, cmdid: 9) != nil)
    }

    @Test("GetHost by key (id 100 -> 101): a key sticks to one host, keys spread; both client APIs",
          arguments: PollerKind.allCases)
    func getHostByKey(poller: PollerKind) async throws {
        let world = try AgentWorld.make(poller: poller, routes: [route12: [h1, h2, h3]])
        defer { world.shutdown() }
        let blocking = try BlockingLoadBalanceClient(agentPorts: world.ports, timeout: .seconds(2))
        // Wait for the route; report the call that found it, so no host starts with a call outstanding.
        #expect(try await eventually {
            guard let host = try blocking.getHost(modid: 1, cmdid: 2).host else { return false }
            blocking.report(modid: 1, cmdid: 2, host: host, success: true)
            return true
        })
        var owners: [String: LoadBalancing.Host] = [:]
        for i in 0..<60 {
            let key = "movie-\(i)"
            // Each call is reported before the next (a call still outstanding counts as load on its host); a
            // GetRoute round trip on the same socket makes sure the agent has taken the report.
            for round in 0..<3 {
                let sync = try blocking.getHost(modid: 1, cmdid: 2, key: key)
                #expect(sync.retcode == LarsReturnCode.success)
                if round == 0 { owners[key] = sync.host } else { #expect(sync.host == owners[key], "\(key)") }
                blocking.report(modid: 1, cmdid: 2, host: sync.host!, success: true)
                _ = try blocking.getRoute(modid: 1, cmdid: 2)
                let async = try await world.client.getHost(modid: 1, cmdid: 2, key: key)
                #expect(async.host == owners[key], "\(key) round \(round)")
                world.client.report(modid: 1, cmdid: 2, host: async.host!, success: true)
                _ = try await world.client.getRoute(modid: 1, cmdid: 2)
            }
        }
        #expect(Set(owners.values) == [h1, h2, h3])
        // Unknown module: NOEXIST through the keyed call as well.
        #expect(try blocking.getHost(modid: 5, cmdid: 5, key: "x").retcode == LarsReturnCode.notExist)
    }

    @Test("the async client from a task on its own loop (executor preference): same answers, no thread hop",
          arguments: PollerKind.allCases)
    func asyncClientOnItsLoop(poller: PollerKind) async throws {
        let world = try AgentWorld.make(poller: poller, routes: [route12: [h1, h2]])
        defer { world.shutdown() }
        let client = world.client
        // Wait for the route first: on a loaded machine the 200 calls below could all come before it.
        #expect(try await eventually {
            guard let host = try await client.getHost(modid: 1, cmdid: 2).host else { return false }
            client.report(modid: 1, cmdid: 2, host: host, success: true)
            return true
        })
        let seen = try await Task(executorPreference: client.loop) { () async throws -> (Set<LoadBalancing.Host>, Bool) in
            var hosts: Set<LoadBalancing.Host> = []
            var onLoop = true
            for _ in 0..<200 {
                let r = try await client.getHost(modid: 1, cmdid: 2)
                onLoop = onLoop && client.loop.inLoopThread
                if let host = r.host {
                    hosts.insert(host)
                    client.report(modid: 1, cmdid: 2, host: host, success: true)
                }
            }
            return (hosts, onLoop)
        }.value
        #expect(seen.0 == [h1, h2])
        #expect(seen.1)
    }

    @Test("a client with its own loop closed from a task running on that loop: no crash, calls fail with closed")
    func closeFromItsOwnLoop() async throws {
        let port = try freeTCPPort()
        let client = try LoadBalanceClient(agentPorts: [port], timeout: .milliseconds(200))
        let closedOnLoop = await Task(executorPreference: client.loop) { () async -> Bool in
            client.close()
            return client.loop.inLoopThread
        }.value
        #expect(closedOnLoop)
        await #expect(throws: LoadBalanceClientError.closed) { _ = try await client.getHost(modid: 1, cmdid: 2) }
    }

    @Test("at max_modules a new module evicts the oldest one without hosts; the route with hosts stays",
          arguments: PollerKind.allCases)
    func moduleLimit(poller: PollerKind) async throws {
        let world = try AgentWorld.make(poller: poller, routes: [route12: [h1]]) { $0.maxModules = 3 }
        defer { world.shutdown() }
        #expect(try await eventually { try await world.client.getHost(modid: 1, cmdid: 2).isSuccess })
        for modid in Int32(20)...Int32(22) {
            #expect(try await world.client.getHost(modid: modid, cmdid: 1).retcode == LarsReturnCode.notExist)
        }
        #expect(await world.agent.balancerSnapshot(modid: 20, cmdid: 1) == nil)
        #expect(await world.agent.balancerSnapshot(modid: 21, cmdid: 1) != nil)
        #expect(await world.agent.balancerSnapshot(modid: 22, cmdid: 1) != nil)
        let statistics = await world.agent.statistics()
        #expect(statistics?.modules == 3 && statistics?.modulesEvicted == 1)
        #expect(try await world.client.getHost(modid: 1, cmdid: 2).host == h1)
    }

    @Test("name service stopped: GetHost keeps answering from the known route", arguments: PollerKind.allCases)
    func nameServiceDown(poller: PollerKind) async throws {
        let world = try AgentWorld.make(poller: poller, routes: [route12: [h1]]) {
            $0.balancer.updateTimeout = .milliseconds(100)  // refreshes hit the dead name service
        }
        defer { world.shutdown() }
        _ = try await world.client.getHost(modid: 1, cmdid: 2)
        #expect(try await eventually { try await world.client.getHost(modid: 1, cmdid: 2).isSuccess })
        world.names.stop()
        for _ in 0..<30 {
            let r = try await world.client.getHost(modid: 1, cmdid: 2)
            #expect(r.host == h1)
            try await Task.sleep(for: .milliseconds(10))
        }
    }

    @Test("an agent restarted while the name service is down serves from its route file",
          arguments: PollerKind.allCases)
    func restartFromRouteFile(poller: PollerKind) async throws {
        let file = FileManager.default.temporaryDirectory.appendingPathComponent("lb-routes-\(UUID()).json").path
        defer { try? FileManager.default.removeItem(atPath: file) }
        do {
            let world = try AgentWorld.make(poller: poller, routes: [route12: [h1, h2]]) { $0.routeCacheFile = file }
            _ = try await world.client.getHost(modid: 1, cmdid: 2)
            #expect(try await eventually { try await world.client.getHost(modid: 1, cmdid: 2).isSuccess })
            world.shutdown()
        }
        #expect(try RouteCacheFile(path: file).load() == [route12: [h1, h2]])
        let group = try EventLoopGroup(ioLoops: 1, configuration: LoopConfiguration(poller: poller))
        defer { group.shutdown() }
        let deadNames = try freeTCPPort()
        let agent = LoadBalanceAgent(group: group, configuration: AgentConfiguration(
            ports: [0, 0, 0], nameServicePort: deadNames, reporterPort: try freeTCPPort(), routeCacheFile: file),
            logger: testLogger)
        let ports = try agent.start().map { Int($0.port) }
        defer { agent.shutdown() }
        let client = try LoadBalanceClient(agentPorts: ports, timeout: .seconds(2))
        defer { client.close() }
        let first = try await client.getHost(modid: 1, cmdid: 2)
        #expect(first.isSuccess && [h1, h2].contains(first.host!))
        #expect(Set(try await client.getRoute(modid: 1, cmdid: 2)) == [h1, h2])
    }

    @Test("an agent restarted from its route file, the name service down, serves the weights at once",
          arguments: PollerKind.allCases)
    func restartFromRouteFileKeepsWeights(poller: PollerKind) async throws {
        let file = FileManager.default.temporaryDirectory.appendingPathComponent("lb-weights-\(UUID()).json").path
        defer { try? FileManager.default.removeItem(atPath: file) }
        do {
            let world = try AgentWorld.make(poller: poller, routes: [route12: [h1, h2]]) { $0.routeCacheFile = file }
            world.names.weights.withLock { $0 = [h1: 3] }
            _ = try await world.client.getHost(modid: 1, cmdid: 2)
            #expect(try await eventually { try await world.client.getHost(modid: 1, cmdid: 2).isSuccess })
            world.shutdown()  // writes the cache file
        }
        let saved = try RouteCacheFile(path: file).loadRoutes()
        #expect(saved == [route12: CachedRoute(hosts: [h1, h2], weights: [h1: 3])])

        // The name service down: every pick comes from the file's route, weighted 3:1 from the first call.
        let picks = try await picksFromRouteFile(file, poller: poller, calls: 40)
        #expect(picks == [h1: 30, h2: 10], "smooth weighted round robin over weights 3 and 1")
    }

    /// Starts an agent whose name service is down, from the route cache file `file` alone, and counts the hosts of
    /// `calls` GetHost calls for (1, 2).
    private func picksFromRouteFile(_ file: String, poller: PollerKind, calls: Int) async throws
        -> [LoadBalancing.Host: Int]
    {
        let group = try EventLoopGroup(ioLoops: 1, configuration: LoopConfiguration(poller: poller))
        defer { group.shutdown() }
        let agent = LoadBalanceAgent(group: group, configuration: AgentConfiguration(
            ports: [0, 0, 0], nameServicePort: try freeTCPPort(), reporterPort: try freeTCPPort(),
            routeCacheFile: file), logger: testLogger)
        let ports = try agent.start().map { Int($0.port) }
        defer { agent.shutdown() }
        let client = try LoadBalanceClient(agentPorts: ports, timeout: .seconds(2))
        defer { client.close() }
        var picks: [LoadBalancing.Host: Int] = [:]
        for _ in 0..<calls {
            let answer = try await client.getHost(modid: 1, cmdid: 2)
            picks[try #require(answer.host), default: 0] += 1
        }
        return picks
    }

    @Test("a route file written before weights (no `weights`) still loads: every host weighs 1",
          arguments: PollerKind.allCases)
    func routeFileWithoutWeights(poller: PollerKind) async throws {
        let file = FileManager.default.temporaryDirectory.appendingPathComponent("lb-old-\(UUID()).json").path
        defer { try? FileManager.default.removeItem(atPath: file) }
        let old = #"{"routes": [{"cmdid": 2, "hosts": ["\#(h1)", "\#(h2)"], "modid": 1}]}"#
        try Data(old.utf8).write(to: URL(fileURLWithPath: file))
        #expect(try RouteCacheFile(path: file).loadRoutes() == [route12: CachedRoute(hosts: [h1, h2])])
        let picks = try await picksFromRouteFile(file, poller: poller, calls: 10)
        #expect(picks == [h1: 5, h2: 5])
    }

    @Test("reports are aggregated per module and carry the right counts", arguments: PollerKind.allCases)
    func reportsAggregated(poller: PollerKind) async throws {
        let world = try AgentWorld.make(poller: poller, routes: [route12: [h1, h2]]) { $0.caller = 4242 }
        defer { world.shutdown() }
        _ = try await world.client.getHost(modid: 1, cmdid: 2)
        #expect(try await eventually { try await world.client.getHost(modid: 1, cmdid: 2).isSuccess })
        let start = ContinuousClock.now
        for i in 0..<300 {
            // h1: 300 successes; h2: 285 successes, 15 errors (every twentieth call: too few to overload it, so
            // both stay in the window they began, whose running counts the reports carry).
            world.client.report(modid: 1, cmdid: 2, host: h1, success: true)
            world.client.report(modid: 1, cmdid: 2, host: h2, retcode: i % 20 == 0 ? 1 : 0)
            if i % 50 == 0 { try await Task.sleep(for: .milliseconds(20)) }
        }
        #expect(await eventually {
            let t = world.reporter.snapshot
            return t.succ[h1] == 300 && t.succ[h2] == 285 && t.err[h2] == 15
        })
        let elapsed = ContinuousClock.now - start
        let t = world.reporter.snapshot
        #expect(t.err[h1, default: 0] == 0)
        // 600 ReportRequests; one ReportStatusRequest per module per 200 ms interval at most.
        let intervals = Int(elapsed / .milliseconds(200)) + 2
        #expect(t.requests <= intervals, "\(t.requests) reports in \(elapsed)")
        #expect(t.requests < 600 / 20)
        #expect(t.callers == [4242] && t.modules == [route12])
    }

    @Test("every report names every host of the module, with counts that grow in a window and restart with it",
          arguments: PollerKind.allCases)
    func reportsCarryRunningWindowCounts(poller: PollerKind) async throws {
        let window = Duration.seconds(5)  // long enough for the first two steps on a loaded machine
        let world = try AgentWorld.make(poller: poller, routes: [route12: [h1, h2, h3]]) {
            $0.balancer.idleTimeout = window
        }
        defer { world.shutdown() }
        #expect(try await eventually { try await world.client.getHost(modid: 1, cmdid: 2).isSuccess })
        let windowStart = ContinuousClock.now  // the hosts' window began before this
        func lastCounts(of host: LoadBalancing.Host) -> (UInt32, UInt32)? {
            world.reporter.snapshot.reports.last.flatMap { report in
                report.results.first { LoadBalancing.Host(wireIP: $0.ip, wirePort: $0.port) == host }
                    .map { ($0.succ, $0.err) }
            }
        }
        for _ in 0..<3 { world.client.report(modid: 1, cmdid: 2, host: h1, success: true) }
        #expect(await eventually { lastCounts(of: h1).map { $0 == (3, 0) } ?? false })
        world.client.report(modid: 1, cmdid: 2, host: h1, success: true)
        world.client.report(modid: 1, cmdid: 2, host: h1, success: false)
        // The next report holds the counts since the window began, not the two calls since the last report.
        #expect(await eventually { lastCounts(of: h1).map { $0 == (4, 1) } ?? false })
        // The call that comes after the window ends it; the calls after it count from zero.
        try await Task.sleep(until: windowStart + window + .milliseconds(200))
        world.client.report(modid: 1, cmdid: 2, host: h1, success: true)
        for _ in 0..<2 { world.client.report(modid: 1, cmdid: 2, host: h1, success: true) }
        #expect(await eventually { lastCounts(of: h1).map { $0 == (2, 0) } ?? false })
        let reports = world.reporter.snapshot.reports
        #expect(reports.count >= 3)
        for report in reports {
            // Every host, those without calls too, with Lars's caller: this machine's primary IPv4 address.
            #expect(Set(report.results.compactMap { LoadBalancing.Host(wireIP: $0.ip, wirePort: $0.port) })
                        == [h1, h2, h3])
            #expect(report.results.allSatisfy { $0.overload == false })
            #expect(UInt32(bitPattern: report.caller) == AgentConfiguration.defaultCaller)
            #expect(report.results.filter { $0.ip != h1.wireIP }.allSatisfy { $0.succ == 0 && $0.err == 0 })
        }
    }

    @Test("a cancelled call ends at once with CancellationError, long before its timeout")
    func cancelledCall() async throws {
        let port = try freeTCPPort()
        let client = try LoadBalanceClient(agentPorts: [port], timeout: .seconds(30))
        defer { client.close() }
        let start = ContinuousClock.now
        let call = Task { try await client.getHost(modid: 1, cmdid: 2) }
        try await Task.sleep(for: .milliseconds(50))
        call.cancel()
        await #expect(throws: CancellationError.self) { _ = try await call.value }
        #expect(ContinuousClock.now - start < .seconds(5))
        await client.shutdown()
        await #expect(throws: LoadBalanceClientError.closed) { _ = try await client.getRoute(modid: 1, cmdid: 2) }
    }

    @Test("the client API names the agent address when nobody answers")
    func clientTimeout() async throws {
        let port = try freeTCPPort()  // UDP on the same number: nobody listens there either, most likely
        let client = try LoadBalanceClient(agentPorts: [port, port, port], timeout: .milliseconds(200))
        defer { client.close() }
        let start = ContinuousClock.now
        await #expect(throws: LoadBalanceClientError.timeout("no agent answered on 127.0.0.1:\(port) within 200 ms")) {
            _ = try await client.getHost(modid: 1, cmdid: 2)
        }
        await #expect(throws: LoadBalanceClientError.timeout("no agent answered on 127.0.0.1:\(port) within 200 ms")) {
            _ = try await client.getRoute(modid: 1, cmdid: 2)
        }
        #expect(ContinuousClock.now - start < .seconds(2))
    }

    @Test("the blocking client: same answers, same timeout error, with and without spinning",
          arguments: PollerKind.allCases, [Duration.zero, .microseconds(50)])
    func blockingClient(poller: PollerKind, spin: Duration) async throws {
        let world = try AgentWorld.make(poller: poller, routes: [route12: [h1, h2]])
        defer { world.shutdown() }
        let client = try BlockingLoadBalanceClient(agentPorts: world.ports, timeout: .seconds(2), spin: spin)
        #expect(try client.getHost(modid: 1, cmdid: 2).retcode == LarsReturnCode.notExist)
        #expect(try await eventually { try client.getHost(modid: 1, cmdid: 2).isSuccess })
        #expect(Set((0..<4).compactMap { _ in try? client.getHost(modid: 1, cmdid: 2).host }) == [h1, h2])
        #expect(Set(try client.getRoute(modid: 1, cmdid: 2)) == [h1, h2])
        client.report(modid: 1, cmdid: 2, host: h1, success: false)
        #expect(await eventually {
            await world.agent.balancerSnapshot(modid: 1, cmdid: 2)?.state(of: h1)?.consecutiveErrors == 1
        })
        let port = try freeTCPPort()
        let lonely = try BlockingLoadBalanceClient(agentPorts: [port], timeout: .milliseconds(100), spin: spin)
        #expect(throws: LoadBalanceClientError.timeout("no agent answered on 127.0.0.1:\(port) within 100 ms")) {
            _ = try lonely.getHost(modid: 1, cmdid: 2)
        }
    }

    @Test("a spin window longer than the timeout still ends at the timeout")
    func spinLongerThanTimeout() throws {
        let port = try freeTCPPort()
        let lonely = try BlockingLoadBalanceClient(agentPorts: [port], timeout: .milliseconds(100), spin: .seconds(5))
        let start = ContinuousClock.now
        #expect(throws: LoadBalanceClientError.timeout("no agent answered on 127.0.0.1:\(port) within 100 ms")) {
            _ = try lonely.getHost(modid: 1, cmdid: 2)
        }
        #expect(ContinuousClock.now - start < .seconds(2))
    }

    @Test("configuration file: Lars keys, seconds, HOST:PORT")
    func configurationFile() throws {
        var c = AgentConfiguration()
        try c.apply(configurationText: """
            # agent
            probe_num = 5
            err_rate = 0.2
            idle_timeout = 30
            names = 10.0.0.9:7000
            ports = 9000, 9001,9002
            busy_poll_us = 0
            empty_module_timeout = 90
            max_modules = 500
            """)
        #expect(c.emptyModuleTimeout == .seconds(90) && c.maxModules == 500)
        #expect(c.busyPoll == .zero && AgentConfiguration().busyPoll == .microseconds(50))
        #expect(throws: AgentConfigurationError.self) { try c.apply(configurationText: "busy_poll_us = -1") }
        #expect(c.balancer.probeNum == 5 && c.balancer.errRate == 0.2 && c.balancer.idleTimeout == .seconds(30))
        #expect(c.nameServiceHost == "10.0.0.9" && c.nameServicePort == 7000 && c.ports == [9000, 9001, 9002])
        #expect(throws: AgentConfigurationError.self) { try c.apply(configurationText: "probe_nom = 3") }
    }

    @Test("caller: an IPv4 address or a number, stored unsigned; by default the machine's primary address")
    func callerSetting() throws {
        var c = AgentConfiguration()
        #expect(c.caller == AgentConfiguration.defaultCaller)
        #expect(c.apply(key: "caller", value: "192.168.1.5") == nil && c.caller == 0xC0A8_0105)
        #expect(c.apply(key: "caller", value: "4294967295") == nil && c.caller == .max)
        #expect(c.apply(key: "caller", value: "77") == nil && c.caller == 77)
        #expect(c.apply(key: "caller", value: "-1")?.contains("IPv4 address") == true)
        #expect(c.apply(key: "caller", value: "300.1.1.1") != nil && c.caller == 77)
        // The default is an address of one of this machine's interfaces that are up (or 127.0.0.1).
        let own = LocalAddresses.interfaceIPv4().map(\.ip)
        #expect(own.contains(AgentConfiguration.defaultCaller) || AgentConfiguration.defaultCaller == 0x7F00_0001)
    }

    @Test("the default route's interface is read from /proc/net/route's text: the up route to 0/0, lowest metric")
    func defaultRouteParsing() {
        let table = """
            Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT
            wlan0\t00000000\t0101A8C0\t0003\t0\t0\t600\t00000000\t0\t0\t0
            eth0\t00000000\t010200C0\t0003\t0\t0\t100\t00000000\t0\t0\t0
            eth1\t00000000\t010300C0\t0002\t0\t0\t1\t00000000\t0\t0\t0
            eth0\t000200C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0
            """
        #expect(LocalAddresses.defaultRouteInterface(routeTable: table) == "eth0")
        #expect(LocalAddresses.defaultRouteInterface(routeTable: "Iface\tDestination\n") == nil)
        #expect(LocalAddresses.defaultRouteInterface(routeTable: "garbage\n\n\t\t") == nil)
    }
}
