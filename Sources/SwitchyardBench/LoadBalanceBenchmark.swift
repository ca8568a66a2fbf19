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
/// route file (no name service needed).
public enum LoadBalanceBenchmark {
    /// What a run measured.
    public struct Result: Sendable {
        /// GetHost + Report pairs completed.
        public var calls: Int
        public var seconds: Double
        public var callsPerSecond: Double { seconds > 0 ? Double(calls) / seconds : 0 }
        /// GetHost answers that were not SUCC (should be 0).
        public var failures: Int
        /// ReportStatusRequests the reporter received, and the calls they accounted for.
        public var reportStatusRequests: Int
        public var reportedCalls: Int
    }

    private final class Counters: Sendable {
        let total = Atomic<Int>(0)
        let failures = Atomic<Int>(0)
        let stop = Atomic<Bool>(false)

        func count(_ result: GetHostResult) {
            if case .host = result {} else { failures.wrappingAdd(1, ordering: .relaxed) }
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
                             progress: @Sendable (Int, Int) -> Void) async throws {
        var last = 0
        for second in 1...max(1, seconds) {
            try await Task.sleep(until: start + .seconds(second), clock: .continuous)
            let now = counters.total.load(ordering: .relaxed)
            progress(second, now - last)
            last = now
        }
        counters.stop.store(true, ordering: .relaxed)
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
    public static func run(seconds: Int, clients: Int, api: API = .async, poller: PollerKind = .epoll,
                           agentBusyPoll: Duration = AgentConfiguration().busyPoll,
                           clientSpin: Duration = .microseconds(50), logger: Logger,
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

        // Route file: module 1/1 on three hosts. The name service is absent (a port nobody listens on).
        let file = FileManager.default.temporaryDirectory
            .appendingPathComponent("switchyard-lb-bench-\(getpid()).json").path
        defer { try? FileManager.default.removeItem(atPath: file) }
        let hosts = (1...3).map { LoadBalancing.Host(ip: 0x0A00_0000 + UInt32($0), port: 9000) }
        try RouteCacheFile(path: file).save([RouteKey(modid: 1, cmdid: 1): hosts])
        let agent = LoadBalanceAgent(group: group, configuration: AgentConfiguration(
            ports: [0, 0, 0], nameServicePort: 1, reporterPort: reporterPort, routeCacheFile: file,
            maxBackoff: .seconds(30)), logger: logger)
        let ports = try agent.start().map { Int($0.port) }
        defer { agent.shutdown() }

        let counters = Counters()
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
                            let result = try await client.getHost(modid: 1, cmdid: 1)
                            counters.count(result)
                            if let host = result.host { client.report(modid: 1, cmdid: 1, host: host, success: true) }
                        }
                    }
                }
                try await tick(seconds: seconds, start: start, counters: counters, progress: progress)
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
                        guard let result = try? client.getHost(modid: 1, cmdid: 1) else {
                            counters.failures.wrappingAdd(1, ordering: .relaxed)
                            continue
                        }
                        counters.count(result)
                        if let host = result.host { client.report(modid: 1, cmdid: 1, host: host, success: true) }
                    }
                }.start()
            }
            try await tick(seconds: seconds, start: start, counters: counters, progress: progress)
            await withCheckedContinuation { c in done.notify(queue: .global()) { c.resume() } }
        }
        let elapsed = ContinuousClock.now - start
        // Let the last aggregated report go out.
        try await Task.sleep(for: agent.configuration.reportInterval + .milliseconds(300))
        let r = reported.withLock { $0 }
        return Result(calls: counters.total.load(ordering: .relaxed), seconds: elapsed.secondsValue,
                      failures: counters.failures.load(ordering: .relaxed), reportStatusRequests: r.requests,
                      reportedCalls: r.calls)
    }
}
