import Foundation
import LarsProtocol
import LoadBalanceAgent
import LoadBalanceClient
import LoadBalancing
import Logging
import Messaging
import Reactor
import SwitchyardCore
import Synchronization

/// GetHost + Report calls per second through a real agent over UDP, with the client API and reporting on (an
/// in-process reporter that counts what it receives). The agent runs on its own loop with a route loaded from a
/// route file (no name service needed). With `batch` above 1, each call is one batch GetHost (ids 104/105) for that
/// many services (modules 1/1, 2/1, 3/1, ... in turn), then a Report per service: a client's login.
public enum LoadBalanceBenchmark {
    /// What a run measured.
    public struct Result: Sendable {
        /// GetHost (or batch GetHost) round trips completed, each with its Reports.
        public var calls: Int
        /// Services per call (1: plain GetHost).
        public var batch: Int = 1
        /// Services answered per second (`callsPerSecond` times `batch`).
        public var servicesPerSecond: Double { callsPerSecond * Double(batch) }
        public var seconds: Double
        public var callsPerSecond: Double { seconds > 0 ? Double(calls) / seconds : 0 }
        /// GetHost answers that were not SUCC (should be 0).
        public var failures: Int
        /// ReportStatusRequests the reporter received, and the calls they accounted for.
        public var reportStatusRequests: Int
        public var reportedCalls: Int
        /// Calls completed in each second of the run.
        public var perSecond: [Int] = []
        /// With a failover (`failoverAt`): calls/s before the first name service was stopped, in the second it was,
        /// and after (from the next second on).
        public var failover: (before: Double, during: Double, after: Double)?
    }

    private final class Counters: Sendable {
        let total = Atomic<Int>(0)
        let failures = Atomic<Int>(0)
        let stop = Atomic<Bool>(false)

        func count(_ result: GetHostResult) {
            if case .host = result {} else { failures.wrappingAdd(1, ordering: .relaxed) }
            total.wrappingAdd(1, ordering: .relaxed)
        }

        /// A batch: one call; a failure per answer that is not SUCC.
        func count(_ results: [GetHostResult]) {
            let failed = results.count { $0.host == nil }
            if failed > 0 { failures.wrappingAdd(failed, ordering: .relaxed) }
            total.wrappingAdd(1, ordering: .relaxed)
        }
    }

    private final class UncheckedClient: @unchecked Sendable {
        // @unchecked Sendable: handed to exactly one thread, which is the only one to use it.
        let client: BlockingLoadBalanceClient
        init(_ client: BlockingLoadBalanceClient) { self.client = client }
    }

    /// Reports progress every second, then tells the clients to stop.
    private static func tick(seconds: Int, start: ContinuousClock.Instant, counters: Counters,
                             failoverAt: Int? = nil, failover: (@Sendable () -> Void)? = nil,
                             progress: @Sendable (Int, Int) -> Void) async throws -> [Int] {
        var last = 0
        var perSecond: [Int] = []
        for second in 1...max(1, seconds) {
            if second - 1 == failoverAt { failover?() }
            try await Task.sleep(until: start + .seconds(second), clock: .continuous)
            let now = counters.total.load(ordering: .relaxed)
            progress(second, now - last)
            perSecond.append(now - last)
            last = now
        }
        counters.stop.store(true, ordering: .relaxed)
        return perSecond
    }

    /// A name service for the failover run: answers GetRouteRequest (id 1) with the route's hosts.
    private static func routeServer(group: EventLoopGroup, hosts: [LoadBalancing.Host]) throws -> FramedServer {
        let router = MessageRouter<TCPConnection>()
        try router.on(MessageID.getRouteRequest, as: Lars_GetRouteRequest.self) { request, message in
            var response = Lars_GetRouteResponse()
            response.modid = request.modid
            response.cmdid = request.cmdid
            response.host = hosts.map(Lars_HostInfo.init)
            message.connection.send(response, id: MessageID.getRouteResponse)
        }
        let server = FramedServer(group: group, configuration: FramedServerConfiguration(
            server: ServerConfiguration(port: 0)), router: router)
        _ = try server.start()
        return server
    }

    /// Which client API drives the agent.
    public enum API: String, Sendable, CaseIterable {
        /// `LoadBalanceClient` from async tasks (each client its own socket and loop).
        case async
        /// `BlockingLoadBalanceClient` from threads (each thread its own client and socket).
        case blocking
    }

    /// Runs `clients` concurrent clients for `seconds`, each calling GetHost then Report in a loop.
    /// `agentBusyPoll`: the agent loop's busy-poll window; `clientSpin`: the blocking client's (see
    /// `BlockingLoadBalanceClient.init`).
    public static func run(seconds: Int, clients: Int, api: API = .async, batch: Int = 1, poller: PollerKind = .epoll,
                           agentBusyPoll: Duration = AgentConfiguration().busyPoll,
                           clientSpin: Duration = .microseconds(50), failoverAt: Int? = nil, logger: Logger,
                           progress: @Sendable (Int, Int) -> Void = { _, _ in }) async throws -> Result {
        let group = try EventLoopGroup(ioLoops: 1, configuration: LoopConfiguration(
            poller: poller, busyPoll: agentBusyPoll))
        defer { group.shutdown() }

        // Reporter sink.
        let reported = Mutex<(requests: Int, calls: Int)>((0, 0))
        let router = MessageRouter<TCPConnection>()
        try router.on(MessageID.reportStatusRequest, as: Lars_ReportStatusRequest.self) { request, _ in
            let calls = request.results.reduce(0) { $0 + Int($1.succ) + Int($1.err) }
            reported.withLock { $0.requests += 1; $0.calls += calls }
        }
        let reporter = FramedServer(group: group, configuration: FramedServerConfiguration(
            server: ServerConfiguration(port: 0)), router: router)
        let reporterPort = Int(try reporter.start().port)
        defer { reporter.shutdown(timeout: .seconds(1)) }

        // Route file: modules 1/1 (and 2/1, 3/1, ... for batches) on three hosts. The name service is absent (a port
        // nobody listens on).
        precondition((1...AgentConfiguration.maxBatchItemsLimit).contains(batch), "batch must be 1...512")
        let file = FileManager.default.temporaryDirectory
            .appendingPathComponent("switchyard-lb-bench-\(getpid()).json").path
        defer { try? FileManager.default.removeItem(atPath: file) }
        let hosts = (1...3).map { LoadBalancing.Host(ip: 0x0A00_0000 + UInt32($0), port: 9000) }
        let queries = (1...batch).map { HostQuery(modid: Int32($0), cmdid: 1) }
        try RouteCacheFile(path: file).save(Dictionary(uniqueKeysWithValues: queries.map {
            (RouteKey(modid: $0.modid, cmdid: 1), hosts) }))
        var configuration = AgentConfiguration(
            ports: [0, 0, 0], nameServicePort: 1, reporterPort: reporterPort, routeCacheFile: file,
            maxBackoff: .seconds(30), maxBatchItems: max(batch, AgentConfiguration().maxBatchItems))
        // With a failover: two name services (replicas) answer the routes; the first is stopped at `failoverAt` s.
        var replicas: [FramedServer] = []
        if failoverAt != nil {
            replicas = try (0..<2).map { _ in try routeServer(group: group, hosts: hosts) }
            configuration.nameServicePort = Int(replicas[0].localAddress!.port)
            configuration.nameServiceAlternates = [ClientEndpoint(host: "127.0.0.1",
                                                                  port: Int(replicas[1].localAddress!.port))]
            configuration.initialBackoff = .milliseconds(50)
        }
        defer { for replica in replicas { replica.shutdown(timeout: .seconds(1)) } }
        let first = replicas.first
        let stopFirst: @Sendable () -> Void = { first?.shutdown(timeout: .zero) }
        let agent = LoadBalanceAgent(group: group, configuration: configuration, logger: logger)
        let ports = try agent.start().map { Int($0.port) }
        defer { agent.shutdown() }

        let counters = Counters()
        var perSecond: [Int] = []
        let start = ContinuousClock.now
        switch api {
        case .async:
            let clientObjects = try (0..<clients).map { _ in
                try LoadBalanceClient(agentPorts: ports, busyPoll: clientSpin)
            }
            defer { for c in clientObjects { c.close() } }
            try await withThrowingTaskGroup(of: Void.self) { tasks in
                for client in clientObjects {
                    // On the client's own loop: the reply resumes the task there, with no hop to another thread.
                    tasks.addTask(executorPreference: client.loop) {
                        while !counters.stop.load(ordering: .relaxed) {
                            if batch > 1 {
                                let results = try await client.getHosts(queries)
                                counters.count(results)
                                for (query, result) in zip(queries, results) {
                                    if let host = result.host {
                                        client.report(modid: query.modid, cmdid: 1, host: host, success: true)
                                    }
                                }
                                continue
                            }
                            let result = try await client.getHost(modid: 1, cmdid: 1)
                            counters.count(result)
                            if let host = result.host { client.report(modid: 1, cmdid: 1, host: host, success: true) }
                        }
                    }
                }
                perSecond = try await tick(seconds: seconds, start: start, counters: counters, failoverAt: failoverAt,
                                           failover: stopFirst, progress: progress)
                try await tasks.waitForAll()
            }
        case .blocking:
            let done = DispatchGroup()
            for _ in 0..<clients {
                let client = try BlockingLoadBalanceClient(agentPorts: ports, spin: clientSpin)
                done.enter()
                // @unchecked Sendable box: the client moves to its thread and is used there only.
                let box = UncheckedClient(client)
                Thread {
                    defer { done.leave() }
                    let client = box.client
                    while !counters.stop.load(ordering: .relaxed) {
                        if batch > 1 {
                            guard let results = try? client.getHosts(queries) else {
                                counters.failures.wrappingAdd(batch, ordering: .relaxed)
                                continue
                            }
                            counters.count(results)
                            for (query, result) in zip(queries, results) {
                                if let host = result.host {
                                    client.report(modid: query.modid, cmdid: 1, host: host, success: true)
                                }
                            }
                            continue
                        }
                        guard let result = try? client.getHost(modid: 1, cmdid: 1) else {
                            counters.failures.wrappingAdd(1, ordering: .relaxed)
                            continue
                        }
                        counters.count(result)
                        if let host = result.host { client.report(modid: 1, cmdid: 1, host: host, success: true) }
                    }
                }.start()
            }
            perSecond = try await tick(seconds: seconds, start: start, counters: counters, failoverAt: failoverAt,
                                       failover: stopFirst, progress: progress)
            await withCheckedContinuation { c in done.notify(queue: .global()) { c.resume() } }
        }
        let elapsed = ContinuousClock.now - start
        // Let the last aggregated report go out.
        try await Task.sleep(for: agent.configuration.reportInterval + .milliseconds(300))
        let r = reported.withLock { $0 }
        var result = Result(calls: counters.total.load(ordering: .relaxed), batch: batch,
                            seconds: elapsed.secondsValue, failures: counters.failures.load(ordering: .relaxed),
                            reportStatusRequests: r.requests, reportedCalls: r.calls, perSecond: perSecond)
        if let at = failoverAt, at > 0, at + 1 < perSecond.count {
            func mean(_ slice: ArraySlice<Int>) -> Double { slice.isEmpty ? 0 : Double(slice.reduce(0, +)) / Double(slice.count) }
            result.failover = (mean(perSecond[..<at]), Double(perSecond[at]), mean(perSecond[(at + 1)...]))
        }
        return result
    }
}
