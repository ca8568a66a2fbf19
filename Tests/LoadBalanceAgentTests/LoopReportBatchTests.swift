import Dispatch
import LoadBalanceAgent
import LoadBalanceClient
import LoadBalancing
import Reactor
import Synchronization
import TestSupport
import Testing

/// Serialized, as the other agent suites over sockets: each case runs a whole agent world (two loops, a name service,
/// a reporter, the agent), and a dozen of them at once would hold hundreds of descriptors beside the select-poller
/// tests of other suites, which cannot watch one above FD_SETSIZE.
@Suite("LoopLoadBalanceClient: the reports of one loop iteration go out together", .serialized)
struct LoopReportBatchTests {
    /// Runs `body` on `loop` (one task: one loop iteration) and waits for it, and for the tasks it posted.
    private func inOneIteration(_ loop: EventLoop, _ body: @escaping @Sendable () -> Void) {
        let done = DispatchSemaphore(value: 0)
        loop.execute { body() }
        // Posted after `body`'s task: runs once the flush that task posted has run.
        loop.execute { loop.execute { done.signal() } }
        done.wait()
    }

    /// An agent with `routes` and a loop client of it, made on the world's first loop.
    private func makeClient(_ poller: PollerKind, routes: [RouteKey: [LoadBalancing.Host]],
                            reportHold: Duration = .milliseconds(10)) throws
        -> (AgentWorld, EventLoop, LoopLoadBalanceClient)
    {
        let world = try AgentWorld.make(poller: poller, routes: routes)
        let loop = world.group.ioLoops[0]
        let made = Mutex<LoopLoadBalanceClient?>(nil)
        let ports = world.ports
        inOneIteration(loop) {
            made.withLock { $0 = try? LoopLoadBalanceClient(loop: loop, agentPorts: ports, reportHold: reportHold) }
        }
        return (world, loop, try #require(made.withLock { $0 }))
    }

    @Test("every report reaches the agent once; one iteration's reports take one system call per 64",
          arguments: PollerKind.allCases)
    func reportsBatched(poller: PollerKind) async throws {
        let key = RouteKey(modid: 7301, cmdid: 1)
        let hosts = (0..<3).map { LoadBalancing.Host(address: "127.0.0.1", port: 9300 + $0)! }
        let (world, loop, client) = try makeClient(poller, routes: [key: hosts])
        let before = try #require(await world.agent.statistics()).reportRequests

        // 150 reports in one iteration: 64, 64 (sent as they fill up), then 22 at the iteration's end.
        inOneIteration(loop) {
            for i in 0..<150 {
                client.report(modid: key.modid, cmdid: key.cmdid, host: hosts[i % 3], success: i % 5 != 0)
            }
        }
        #expect(client.reportStatistics == ReportCounts(sent: 150, dropped: 0, batches: 3))
        // 5 more in another iteration: one system call.
        inOneIteration(loop) {
            for i in 0..<5 { client.report(modid: key.modid, cmdid: key.cmdid, host: hosts[i % 3], success: true) }
        }
        #expect(client.reportStatistics == ReportCounts(sent: 155, dropped: 0, batches: 4))
        let arrived = await eventually(timeout: .seconds(10)) {
            await world.agent.statistics()?.reportRequests == before + 155
        }
        #expect(arrived, "the agent did not count 155 reports")
        // One more, sent last on the same socket (loopback keeps the order): once it is counted, any duplicate of
        // the earlier ones would have been counted too.
        inOneIteration(loop) { client.report(modid: key.modid, cmdid: key.cmdid, host: hosts[0], success: true) }
        let marker = await eventually(timeout: .seconds(10)) {
            await world.agent.statistics()?.reportRequests ?? 0 >= before + 156
        }
        #expect(marker)
        #expect(try #require(await world.agent.statistics()).reportRequests == before + 156)

        // close() sends what still waits.
        inOneIteration(loop) {
            client.report(modid: key.modid, cmdid: key.cmdid, host: hosts[1], success: false)
            client.close()
        }
        #expect(client.reportStatistics.sent == 157)
        let last = await eventually(timeout: .seconds(10)) {
            await world.agent.statistics()?.reportRequests == before + 157
        }
        #expect(last)
        world.shutdown()
    }

    @Test("batched GetHost requests leave with the iteration's reports and are answered; only reports are counted",
          arguments: PollerKind.allCases)
    func batchedGetHost(poller: PollerKind) async throws {
        let key = RouteKey(modid: 7302, cmdid: 1)
        let hosts = (0..<3).map { LoadBalancing.Host(address: "127.0.0.1", port: 9310 + $0)! }
        let (world, loop, client) = try makeClient(poller, routes: [key: hosts])
        let answers = Mutex<[GetHostResult?]>([])
        let ask = { @Sendable in
            client.getHost(modid: key.modid, cmdid: key.cmdid, key: nil, batched: true) { result in
                answers.withLock { $0.append(try? result.get()) }
            }
        }
        // An agent learns a module on its first request: ask until it has the route, one request at a time (each
        // answered before the next, so none is still on its way below).
        let learned = await eventually(timeout: .seconds(10)) {
            let asked = answers.withLock { $0.count }
            inOneIteration(loop) { ask() }
            return await eventually(timeout: .seconds(2)) { answers.withLock { $0.count > asked } }
                && answers.withLock { $0.last??.host != nil }
        }
        #expect(learned, "the agent never answered with a host: \(answers.withLock { $0 })")
        answers.withLock { $0 = [] }

        // Three requests and two reports in one iteration: one batch of reports; every request answered.
        inOneIteration(loop) {
            for _ in 0..<3 { ask() }
            client.report(modid: key.modid, cmdid: key.cmdid, host: hosts[0], success: true)
            client.report(modid: key.modid, cmdid: key.cmdid, host: hosts[1], success: true)
        }
        #expect(client.reportStatistics == ReportCounts(sent: 2, dropped: 0, batches: 1))
        #expect(await eventually(timeout: .seconds(10)) { answers.withLock { $0.count == 3 } })
        for answer in answers.withLock({ $0 }) {
            #expect(answer?.host.map(hosts.contains) == true, "\(String(describing: answer))")
        }
        // Requests alone: sent at the iteration's end, answered; no report batch counted.
        inOneIteration(loop) { ask() }
        #expect(await eventually(timeout: .seconds(10)) { answers.withLock { $0.count == 4 } })
        #expect(client.reportStatistics == ReportCounts(sent: 2, dropped: 0, batches: 1))
        inOneIteration(loop) { client.close() }
        world.shutdown()
    }

    @Test("once the agent answered a batch GetHost: reports go in report batches, counted by the agent as singles",
          arguments: PollerKind.allCases)
    func reportsTallied(poller: PollerKind) async throws {
        let key = RouteKey(modid: 7303, cmdid: 1)
        let hosts = (0..<3).map { LoadBalancing.Host(address: "127.0.0.1", port: 9320 + $0)! }
        let (world, loop, client) = try makeClient(poller, routes: [key: hosts], reportHold: .milliseconds(700))
        let takes = { @Sendable () -> Bool in
            let answer = Mutex(false)
            inOneIteration(loop) { answer.withLock { $0 = client.agentTakesReportBatches } }
            return answer.withLock { $0 }
        }
        #expect(!takes(), "no batch answered yet: single reports")
        // A batch GetHost answered with a host (the agent learns the module on its first request).
        let answered = Mutex<[GetHostResult]?>(nil)
        let learned = await eventually(timeout: .seconds(10)) {
            answered.withLock { $0 = nil }
            inOneIteration(loop) {
                client.getHosts([HostQuery(modid: key.modid, cmdid: key.cmdid)]) { result in
                    answered.withLock { $0 = (try? result.get()) ?? [] }
                }
            }
            return await eventually(timeout: .seconds(2)) { answered.withLock { $0 != nil } }
                && answered.withLock { $0?.first?.host != nil }
        }
        #expect(learned, "the agent never answered the batch with a host")
        #expect(takes())
        let before = try #require(await world.agent.statistics()).reportRequests

        // 200 successes in one iteration: held (nothing sent), then sent after the hold as one batch.
        inOneIteration(loop) {
            for i in 0..<200 { client.report(modid: key.modid, cmdid: key.cmdid, host: hosts[i % 3], success: true) }
        }
        #expect(client.reportStatistics.sent == 0, "successes wait for the hold")
        #expect(await eventually(timeout: .seconds(10)) {
            await world.agent.statistics()?.reportRequests == before + 200
        })
        #expect(client.reportStatistics == ReportCounts(sent: 200, dropped: 0, batches: 1))
        #expect(try #require(await world.agent.statistics()).reportBatchRequests == 1)

        // A failure goes at the end of its iteration, with the successes held before it (no hold).
        inOneIteration(loop) {
            for i in 0..<5 { client.report(modid: key.modid, cmdid: key.cmdid, host: hosts[i % 3], success: true) }
            client.report(modid: key.modid, cmdid: key.cmdid, host: hosts[2], success: false)
        }
        #expect(client.reportStatistics == ReportCounts(sent: 206, dropped: 0, batches: 2))
        #expect(await eventually(timeout: .seconds(10)) {
            await world.agent.statistics()?.reportRequests == before + 206
        })

        // contin_err_limit failures of one host in a row, in one batch: the agent overloads it.
        inOneIteration(loop) {
            for _ in 0..<12 { client.report(modid: key.modid, cmdid: key.cmdid, host: hosts[0], success: false) }
        }
        let overloaded = await eventually(timeout: .seconds(10)) {
            await world.agent.balancerSnapshot(modid: key.modid, cmdid: key.cmdid)?.overloadedHosts == [hosts[0]]
        }
        #expect(overloaded, "the batched failures did not overload \(hosts[0])")

        // More than a batch holds (64 runs): sent at once when full. Alternating outcomes make a run per report.
        inOneIteration(loop) {
            for i in 0..<64 { client.report(modid: key.modid, cmdid: key.cmdid, host: hosts[1], success: i % 2 == 0) }
        }
        #expect(client.reportStatistics == ReportCounts(sent: 282, dropped: 0, batches: 4))
        // close() sends what is held.
        inOneIteration(loop) {
            client.report(modid: key.modid, cmdid: key.cmdid, host: hosts[1], success: true)
            client.close()
        }
        #expect(client.reportStatistics.sent == 283)
        #expect(await eventually(timeout: .seconds(10)) {
            await world.agent.statistics()?.reportRequests == before + 283
        })
        world.shutdown()
    }

    @Test("report batches carry the report secret (field 15): with it they count, without it they are rejected",
          arguments: PollerKind.allCases)
    func batchesCarryTheSecret(poller: PollerKind) async throws {
        let key = RouteKey(modid: 7304, cmdid: 1)
        let hosts = (0..<2).map { LoadBalancing.Host(address: "127.0.0.1", port: 9330 + $0)! }
        let world = try AgentWorld.make(poller: poller, routes: [key: hosts]) { $0.reportSecret = "s3cret" }
        let loop = world.group.ioLoops[0]
        let ports = world.ports
        let made = Mutex<[LoopLoadBalanceClient]>([])
        inOneIteration(loop) {
            for secret in [Array("s3cret".utf8), Array("wrong".utf8)] {
                if let client = try? LoopLoadBalanceClient(loop: loop, agentPorts: ports, reportSecret: secret,
                                                           reportHold: .seconds(5)) {
                    made.withLock { $0.append(client) }
                }
            }
        }
        let clients = made.withLock { $0 }
        try #require(clients.count == 2)
        // Each learns that the agent takes batches from a batch GetHost answered with a host.
        for client in clients {
            let answered = Mutex(false)
            let learned = await eventually(timeout: .seconds(10)) {
                inOneIteration(loop) {
                    client.getHosts([HostQuery(modid: key.modid, cmdid: key.cmdid)]) { result in
                        if case .success(let answers) = result, answers.first?.host != nil {
                            answered.withLock { $0 = true }
                        }
                    }
                }
                return await eventually(timeout: .seconds(2)) { answered.withLock { $0 } }
            }
            #expect(learned)
        }
        let before = try #require(await world.agent.statistics())
        // Failures go at the end of the iteration (no hold): one batch from each client.
        inOneIteration(loop) {
            for _ in 0..<12 {
                clients[0].report(modid: key.modid, cmdid: key.cmdid, host: hosts[0], success: false)
                clients[1].report(modid: key.modid, cmdid: key.cmdid, host: hosts[1], success: false)
            }
        }
        #expect(clients.map { $0.reportStatistics.sent } == [12, 12])
        let counted = await eventually(timeout: .seconds(10)) {
            await world.agent.statistics().map {
                $0.reportBatchRequests == before.reportBatchRequests + 2
                    && $0.reportsRejected == before.reportsRejected + 12
            } ?? false
        }
        let statistics = await world.agent.statistics()
        #expect(counted, "\(String(describing: statistics))")
        // The batch with the secret overloaded its host; the one without changed nothing.
        let overloaded = await world.agent.balancerSnapshot(modid: key.modid, cmdid: key.cmdid)?.overloadedHosts
        #expect(overloaded == [hosts[0]])
        inOneIteration(loop) { for client in clients { client.close() } }
        world.shutdown()
    }
}
