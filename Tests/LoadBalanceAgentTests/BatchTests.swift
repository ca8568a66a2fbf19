import Foundation
import LarsProtocol
import LoadBalanceAgent
import LoadBalanceClient
import LoadBalancing
import Reactor
import TestSupport
import Testing

@Suite("Batch GetHost (ids 104/105) over real sockets", .serialized)
struct BatchTests {
    static let routes: [RouteKey: [LoadBalancing.Host]] = [
        RouteKey(modid: 1, cmdid: 2): [h1, h2, h3],
        RouteKey(modid: 3, cmdid: 1): [h1, h2, h3],
        RouteKey(modid: 4, cmdid: 4): [h2],
    ]

    /// Waits until the agent holds every route of `routes` (GetRoute picks nothing, so no balancer moves).
    func waitForRoutes(_ world: AgentWorld) async throws {
        for (key, hosts) in Self.routes {
            #expect(try await eventually {
                Set(try await world.client.getRoute(modid: key.modid, cmdid: key.cmdid)) == Set(hosts)
            })
        }
    }

    /// Round robin twice over the same route, by key, an unknown module, a one-host route, and round robin again:
    /// every rule of a single GetHost in one batch.
    let queries = [
        HostQuery(modid: 1, cmdid: 2), HostQuery(modid: 1, cmdid: 2), HostQuery(modid: 3, cmdid: 1, key: "room-7"),
        HostQuery(modid: 9, cmdid: 9), HostQuery(modid: 4, cmdid: 4), HostQuery(modid: 1, cmdid: 2),
        HostQuery(modid: 3, cmdid: 1, key: "room-8"),
    ]

    @Test("a batch's answers equal the single answers an identical agent gives, in order; both client APIs",
          arguments: PollerKind.allCases)
    func batchEqualsSingles(poller: PollerKind) async throws {
        let single = try AgentWorld.make(poller: poller, routes: Self.routes)
        defer { single.shutdown() }
        let batched = try AgentWorld.make(poller: poller, routes: Self.routes)
        defer { batched.shutdown() }
        try await waitForRoutes(single)
        try await waitForRoutes(batched)

        var singles: [GetHostResult] = []
        for query in queries {
            if let key = query.key {
                singles.append(try await single.client.getHost(modid: query.modid, cmdid: query.cmdid, key: key))
            } else {
                singles.append(try await single.client.getHost(modid: query.modid, cmdid: query.cmdid))
            }
        }
        let batch = try await batched.client.getHosts(queries)
        #expect(batch == singles)
        #expect(batch[3] == .noSuchModule && batch[4] == .host(h2) && batch[0] != batch[1])
        // The second round through the blocking client, against the agents' state after the first: still equal.
        let blocking = try BlockingLoadBalanceClient(agentPorts: batched.ports, timeout: .seconds(2))
        let blockingSingle = try BlockingLoadBalanceClient(agentPorts: single.ports, timeout: .seconds(2))
        let again = try blocking.getHosts(queries)
        let singlesAgain = try queries.map { query in
            try query.key.map { try blockingSingle.getHost(modid: query.modid, cmdid: query.cmdid, key: $0) }
                ?? blockingSingle.getHost(modid: query.modid, cmdid: query.cmdid)
        }
        #expect(again == singlesAgain)
        // Each item counted as its own request; one batch per call.
        let statistics = try #require(await batched.agent.statistics())
        #expect(statistics.batchRequests == 2 && statistics.batchItems == 2 * queries.count)
        #expect(statistics.getHostRequests == 10 && statistics.getHostByKeyRequests == 4)
        #expect(statistics.batchesRefused == 0)
    }

    @Test("a batch above maxBatchItems gets retcode 2 and a reason, not a crash; the agent goes on serving",
          arguments: PollerKind.allCases)
    func overLongBatch(poller: PollerKind) async throws {
        let world = try AgentWorld.make(poller: poller, routes: Self.routes) { $0.maxBatchItems = 4 }
        defer { world.shutdown() }
        try await waitForRoutes(world)
        let five = Array(repeating: HostQuery(modid: 1, cmdid: 2), count: 5)
        await #expect(throws: LoadBalanceClientError.batchRefused(
            "the batch asks for 5 services; the agent answers at most 4")) {
            try await world.client.getHosts(five)
        }
        let blocking = try BlockingLoadBalanceClient(agentPorts: world.ports, timeout: .seconds(2))
        #expect(throws: LoadBalanceClientError.self) { try blocking.getHosts(five) }
        // Nothing was picked for the refused batches; four is served.
        #expect(await world.agent.balancerSnapshot(modid: 1, cmdid: 2)?.state(of: h1)?.picks == 0)
        let four = try await world.client.getHosts(Array(five.prefix(4)))
        #expect(four.allSatisfy { $0.isSuccess })
        let statistics = try #require(await world.agent.statistics())
        #expect(statistics.batchesRefused == 2 && statistics.batchRequests == 3 && statistics.batchItems == 4)
        // The client refuses what cannot be sent: no query, or a request larger than a datagram.
        await #expect(throws: LoadBalanceClientError.self) { try await world.client.getHosts([]) }
        let huge = [HostQuery(modid: 1, cmdid: 2, key: [UInt8](repeating: 7, count: 70_000))]
        await #expect(throws: LoadBalanceClientError.self) { try await world.client.getHosts(huge) }
    }

    @Test("maxBatchItems is validated: 1...512")
    func maxBatchValidated() {
        #expect(throws: AgentConfigurationError.maxBatchItemsOutOfRange(0)) {
            try AgentConfiguration(maxBatchItems: 0).validate()
        }
        #expect(throws: AgentConfigurationError.maxBatchItemsOutOfRange(513)) {
            try AgentConfiguration(maxBatchItems: 513).validate()
        }
        #expect(throws: Never.self) { try AgentConfiguration(maxBatchItems: 512).validate() }
        var configuration = AgentConfiguration()
        #expect(configuration.apply(key: "max_batch", value: "600") != nil)
        #expect(configuration.apply(key: "max_batch", value: "64") == nil && configuration.maxBatchItems == 64)
    }
}

/// Runs `body` on `loop` and waits for what it hands to its callback.
private func onLoop<T: Sendable>(_ loop: EventLoop,
                                 _ body: @escaping @Sendable (@escaping @Sendable (T) -> Void) -> Void) async -> T {
    await withCheckedContinuation { continuation in
        loop.execute { body { continuation.resume(returning: $0) } }
    }
}

/// A `LoopLoadBalanceClient` made on `loop` (its own thread), for the ports of an agent.
private func loopClient(_ loop: EventLoop, ports: [Int], timeout: Duration = .seconds(2)) async throws
    -> LoopLoadBalanceClient
{
    try await onLoop(loop) { (done: @escaping @Sendable (Result<LoopLoadBalanceClient, any Error>) -> Void) in
        done(Result { try LoopLoadBalanceClient(loop: loop, agentPorts: ports, timeout: timeout) })
    }.get()
}

extension LoopLoadBalanceClient {
    /// `getHosts(_:completion:)` from a task: run on the loop, awaited.
    fileprivate func batch(_ queries: [HostQuery]) async -> Result<[GetHostResult], LoadBalanceClientError> {
        await onLoop(loop) { done in self.getHosts(queries) { done($0) } }
    }

    /// `getHost(modid:cmdid:key:completion:)` from a task.
    fileprivate func single(_ query: HostQuery) async -> Result<GetHostResult, LoadBalanceClientError> {
        await onLoop(loop) { done in
            self.getHost(modid: query.modid, cmdid: query.cmdid, key: query.key) { done($0) }
        }
    }

    fileprivate func closeOnLoop() async {
        _ = await onLoop(loop) { (done: @escaping @Sendable (Bool) -> Void) in
            self.close()
            done(true)
        }
    }
}

@Suite("LoopLoadBalanceClient's batch GetHost over real sockets", .serialized)
struct LoopClientBatchTests {
    @Test("the loop client's batch equals the single answers of an identical agent, in order; refusals are errors",
          arguments: PollerKind.allCases)
    func batchEqualsSingles(poller: PollerKind) async throws {
        let single = try AgentWorld.make(poller: poller, routes: BatchTests.routes)
        defer { single.shutdown() }
        let batched = try AgentWorld.make(poller: poller, routes: BatchTests.routes) { $0.maxBatchItems = 8 }
        defer { batched.shutdown() }
        let probe = BatchTests()
        try await probe.waitForRoutes(single)
        try await probe.waitForRoutes(batched)
        let singleClient = try await loopClient(single.group.ioLoops[0], ports: single.ports)
        let batchClient = try await loopClient(batched.group.ioLoops[0], ports: batched.ports)

        var singles: [GetHostResult] = []
        for query in probe.queries { singles.append(try await singleClient.single(query).get()) }
        let answers = try await batchClient.batch(probe.queries).get()
        #expect(answers == singles)
        #expect(answers[3] == .noSuchModule && answers[4] == .host(h2) && answers[0] != answers[1])
        let statistics = try #require(await batched.agent.statistics())
        #expect(statistics.batchRequests == 1 && statistics.batchItems == probe.queries.count)

        // Above the agent's limit: refused with its reason, nothing picked; none, or too large: refused unsent.
        let nine = Array(repeating: HostQuery(modid: 1, cmdid: 2), count: 9)
        #expect(await batchClient.batch(nine) == .failure(.batchRefused(
            "the batch asks for 9 services; the agent answers at most 8")))
        #expect(await batched.agent.statistics()?.batchesRefused == 1)
        guard case .failure(.batchRefused) = await batchClient.batch([]) else {
            Issue.record("an empty batch was not refused")
            return
        }
        let huge = [HostQuery(modid: 1, cmdid: 2, key: [UInt8](repeating: 7, count: 70_000))]
        guard case .failure(.batchRefused) = await batchClient.batch(huge) else {
            Issue.record("a batch larger than a datagram was not refused")
            return
        }
        #expect(await batched.agent.statistics()?.batchRequests == 2, "neither was sent")
        #expect(batchClient.pendingBatchCount == 0)
        await singleClient.closeOnLoop()
        await batchClient.closeOnLoop()
        #expect(await batchClient.batch(probe.queries) == .failure(.closed))
    }

    @Test("no agent: the batch times out naming the port; close() fails a pending batch with .closed",
          arguments: PollerKind.allCases)
    func timeoutAndClose(poller: PollerKind) async throws {
        let group = try EventLoopGroup(ioLoops: 1, configuration: LoopConfiguration(poller: poller))
        defer { group.shutdown() }
        let silent = RawDatagramSocket()  // a bound port that never answers
        let port = try boundPort(of: silent)
        let quick = try await loopClient(group.ioLoops[0], ports: [port], timeout: .milliseconds(200))
        guard case .failure(.timeout(let message)) = await quick.batch([HostQuery(modid: 1, cmdid: 1)]) else {
            Issue.record("a batch nobody answers did not time out")
            return
        }
        #expect(message.contains("\(port)"))
        #expect(silent.receiveFrame()?.id == Int32(MessageID.getHostBatchRequest.rawValue))
        await quick.closeOnLoop()

        let slow = try await loopClient(group.ioLoops[0], ports: [port], timeout: .seconds(30))
        let outcome = Task { await slow.batch([HostQuery(modid: 1, cmdid: 1)]) }
        #expect(await eventually { slow.pendingBatchCount == 1 })
        await slow.closeOnLoop()
        #expect(await outcome.value == .failure(.closed))
    }
}

/// The port a raw socket is bound to (bound to 127.0.0.1:0 first when it was not).
private func boundPort(of socket: RawDatagramSocket) throws -> Int {
    var sin = sockaddr_in()
    sin.sin_family = sa_family_t(AF_INET)
    inet_pton(AF_INET, "127.0.0.1", &sin.sin_addr)
    _ = withUnsafePointer(to: &sin) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
            bind(socket.fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size))
        }
    }
    var length = socklen_t(MemoryLayout<sockaddr_in>.size)
    let got = withUnsafeMutablePointer(to: &sin) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(socket.fd, $0, &length) }
    }
    guard got == 0 else { throw TestFailure("getsockname failed: errno \(errno)") }
    return Int(UInt16(bigEndian: sin.sin_port))
}
