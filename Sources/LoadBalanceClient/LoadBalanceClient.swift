import LarsProtocol
import LarsWire
import LoadBalancing
import Messaging
import Reactor
import SwitchyardCore
import Synchronization

/// Errors of the client API.
public enum LoadBalanceClientError: Error, Equatable, Sendable, CustomStringConvertible {
    /// No reply within the timeout: no agent listens, or it is stuck. The text names the address and timeout.
    case timeout(String)
    /// The client was closed before the reply arrived.
    case closed
    /// The agent's reply could not be understood.
    case badReply(String)
    /// A batch GetHost was not served: the agent refused it (more services than its `--max-batch`, or none), or it
    /// would not fit in one datagram. The text says which.
    case batchRefused(String)

    public var description: String {
        switch self {
        case .timeout(let text): return text
        case .closed: return "the load-balance client is closed"
        case .badReply(let text): return "bad reply from the agent: \(text)"
        case .batchRefused(let text): return "batch refused: \(text)"
        }
    }
}

/// The application's side of load balancing: asks the local agent for a host, reports how the call went, reads
/// routes. UDP, one socket per client, requests matched to replies by sequence number (a `RequestCorrelator`), each
/// with a timeout; a cancelled call ends at once with `CancellationError`.
///
/// ```swift
/// let client = try LoadBalanceClient()
/// let result = try await client.getHost(modid: 7, cmdid: 1)
/// if let host = result.host {
///     let ok = callTheBackend(host)
///     client.report(modid: 7, cmdid: 1, host: host, success: ok)
/// }
/// ```
///
/// A request for (modid, cmdid) goes to `agentPorts[(modid + cmdid) % agentPorts.count]`. Safe to use from any
/// thread and from many tasks at once.
public final class LoadBalanceClient: Sendable {
    private let agents: AgentEndpoints
    public var agentHost: String { agents.host }
    public var agentPorts: [Int] { agents.ports }
    public var timeout: Duration { agents.timeout }
    /// Sent with every report when the agent requires it (`--report-secret`); nil: none.
    private let reportSecret: [UInt8]?
    private let ownedGroup: EventLoopGroup?
    private let isClosed = Atomic<Bool>(false)
    /// The loop the client's socket is on. Tasks that prefer it as their executor (`Task(executorPreference:)`)
    /// get their replies without a thread hop.
    public let loop: EventLoop
    private let endpoint: FramedUDPEndpoint
    /// GetHost requests by sequence number, GetRoute requests by route (its reply carries no sequence number).
    private let hostRequests = RequestCorrelator<UInt32, Lars_GetHostResponse>()
    private let routeRequests = RequestCorrelator<RouteKey, Lars_GetRouteResponse>()
    private let batchRequests = RequestCorrelator<UInt32, Switchyard_Lb_GetHostBatchResponse>()
    private let sweepTimer: TimerHandle
    private let sequence = Atomic<UInt32>(0)

    /// Binds a UDP socket on `loop` (or on a private one-thread loop when nil, which polls for `busyPoll` after
    /// each datagram before sleeping: the reply to a request usually comes within microseconds, sooner than a
    /// sleeping thread wakes up; `LoopConfiguration.busyPoll`).
    public init(agentHost: String = "127.0.0.1", agentPorts: [Int] = [8888, 8889, 8890],
                timeout: Duration = .milliseconds(500), loop: EventLoop? = nil,
                busyPoll: Duration = .microseconds(50), reportSecret: [UInt8]? = nil) throws {
        agents = try AgentEndpoints(host: agentHost, ports: agentPorts, timeout: timeout)
        self.reportSecret = reportSecret
        let group: EventLoopGroup? = loop == nil
            ? try EventLoopGroup(ioLoops: 0, configuration: LoopConfiguration(busyPoll: busyPoll)) : nil
        ownedGroup = group
        let runLoop = loop ?? group!.acceptorLoop
        self.loop = runLoop
        let hostRequests = self.hostRequests
        let routeRequests = self.routeRequests
        let batchRequests = self.batchRequests
        let router = MessageRouter<UDPPeer>()
        try router.on(MessageID.getHostResponse, as: Lars_GetHostResponse.self) { response, _ in
            hostRequests.resume(response.seq, with: response)
        }
        try router.on(MessageID.getHostByKeyResponse, as: Lars_GetHostResponse.self) { response, _ in
            hostRequests.resume(response.seq, with: response)
        }
        try router.on(MessageID.getHostBatchResponse, as: Switchyard_Lb_GetHostBatchResponse.self) { response, _ in
            batchRequests.resume(response.seq, with: response)
        }
        try router.on(MessageID.apiGetRouteResponse, as: Lars_GetRouteResponse.self) { response, _ in
            routeRequests.resume(RouteKey(modid: response.modid, cmdid: response.cmdid), with: response)
        }
        do {
            endpoint = try FramedUDPEndpoint(loop: runLoop, host: "0.0.0.0", ports: [0], router: router)
        } catch {
            group?.shutdown()
            throw error
        }
        let period = Duration.nanoseconds(Int64(min(max(timeout.nanosecondsSaturated / 10, 1_000_000), 100_000_000)))
        // The requests' deadlines are swept here, on the loop, rather than by a sleeping task per request.
        sweepTimer = runLoop.scheduleRepeating(every: period) {
            let now = SystemInfo.monotonicNanoseconds()
            hostRequests.expire(now: now)
            routeRequests.expire(now: now)
            batchRequests.expire(now: now)
        }
    }

    deinit {
        close()
    }

    /// Fails every pending request with `.closed`, closes the socket and stops the private loop. Idempotent. Safe
    /// from any thread, the client's own loop included (a task running there may end the client's life), and never
    /// blocks: the private loop's thread is joined on a thread of its own (`shutdown()` waits for that).
    public func close() {
        guard let group = closeSocket() else { return }
        Task.detached { await group.shutdown() }
    }

    /// Closes the client as `close()` does and returns once the private loop's thread has stopped, without holding
    /// the caller's thread. Not from a task running on the client's own loop (that loop cannot wait for itself).
    public func shutdown() async {
        _ = closeSocket()
        await ownedGroup?.shutdown()
    }

    /// The first call closes the socket and fails the waiters, and returns the private group to stop (if any).
    private func closeSocket() -> EventLoopGroup? {
        if isClosed.exchange(true, ordering: .acquiringAndReleasing) { return nil }
        sweepTimer.cancel()
        endpoint.close()
        hostRequests.failAll(LoadBalanceClientError.closed)
        routeRequests.failAll(LoadBalanceClientError.closed)
        batchRequests.failAll(LoadBalanceClientError.closed)
        return ownedGroup
    }

    private func address(modid: Int32, cmdid: Int32) -> SocketAddress {
        agents.address(modid: modid, cmdid: cmdid)
    }

    /// Asks the agent for a host of (modid, cmdid). Throws `LoadBalanceClientError.timeout` when no agent answers
    /// within `timeout`.
    public func getHost(modid: Int32, cmdid: Int32) async throws -> GetHostResult {
        let seq = sequence.wrappingAdd(1, ordering: .relaxed).newValue
        return try await exchangeGetHost(AgentRequests.getHost(seq: seq, modid: modid, cmdid: cmdid),
                                         seq: seq, modid: modid, cmdid: cmdid)
    }

    /// Asks the agent for the host of `key`: consistent hashing with bounded loads, so the same key keeps going to
    /// the same host while that host has room (a Switchyard agent only; message id 100).
    public func getHost(modid: Int32, cmdid: Int32, key: [UInt8]) async throws -> GetHostResult {
        let seq = sequence.wrappingAdd(1, ordering: .relaxed).newValue
        return try await exchangeGetHost(AgentRequests.getHost(seq: seq, modid: modid, cmdid: cmdid, key: key),
                                         seq: seq, modid: modid, cmdid: cmdid)
    }

    /// `getHost(modid:cmdid:key:)` with the key's UTF-8 bytes.
    public func getHost(modid: Int32, cmdid: Int32, key: String) async throws -> GetHostResult {
        try await getHost(modid: modid, cmdid: cmdid, key: Array(key.utf8))
    }

    /// Asks the agent for a host of every query in one datagram (a Switchyard agent only; message ids 104/105): the
    /// results in the order of `queries`, each as its own `getHost` would have it. Sent to the port of the first
    /// query. Throws `.batchRefused` when the agent serves no batch that large (its `--max-batch`, default 32) or
    /// the queries do not fit in one datagram, `.timeout` when no agent answers within `timeout`.
    public func getHosts(_ queries: [HostQuery]) async throws -> [GetHostResult] {
        let seq = sequence.wrappingAdd(1, ordering: .relaxed).newValue
        let bytes = try AgentRequests.getHostBatch(seq: seq, queries: queries)
        let destination = address(modid: queries[0].modid, cmdid: queries[0].cmdid)
        let endpoint = self.endpoint
        let response = try await batchRequests.request(seq, deadline: deadline(),
                                                       timeoutError: timeoutError(destination)) {
            endpoint.channels[0].send(bytes, to: destination)
        }
        return try AgentRequests.results(of: response, for: queries)
    }

    private func exchangeGetHost(_ bytes: [UInt8], seq: UInt32, modid: Int32, cmdid: Int32) async throws
        -> GetHostResult
    {
        let destination = address(modid: modid, cmdid: cmdid)
        let endpoint = self.endpoint
        let response = try await hostRequests.request(seq, deadline: deadline(),
                                                      timeoutError: timeoutError(destination)) {
            endpoint.channels[0].send(bytes, to: destination)
        }
        return try GetHostResult(response)
    }

    private func deadline() -> UInt64 { SystemInfo.monotonicNanoseconds() &+ timeout.nanosecondsSaturated }

    private func timeoutError(_ destination: SocketAddress) -> LoadBalanceClientError {
        agents.timeoutError(destination)
    }

    /// Tells the agent how a call to `host` went: retcode 0 is a success, anything else a failure (1 overload).
    /// Fire and forget.
    public func report(modid: Int32, cmdid: Int32, host: Host, retcode: Int32) {
        guard let frame = AgentRequests.report(modid: modid, cmdid: cmdid, host: host, retcode: retcode,
                                                secret: reportSecret) else { return }
        endpoint.channels[0].send(frame, to: address(modid: modid, cmdid: cmdid))
    }

    /// Tells the agent whether a call to `host` succeeded. Fire and forget.
    public func report(modid: Int32, cmdid: Int32, host: Host, success: Bool) {
        report(modid: modid, cmdid: cmdid, host: host, retcode: success ? 0 : 1)
    }

    /// The hosts of (modid, cmdid) as the agent knows them (empty while it fetches a module it had never seen).
    public func getRoute(modid: Int32, cmdid: Int32) async throws -> [Host] {
        let bytes = try AgentRequests.getRoute(modid: modid, cmdid: cmdid)
        let destination = address(modid: modid, cmdid: cmdid)
        let endpoint = self.endpoint
        let response = try await routeRequests.request(RouteKey(modid: modid, cmdid: cmdid), deadline: deadline(),
                                                       timeoutError: timeoutError(destination)) {
            endpoint.channels[0].send(bytes, to: destination)
        }
        return AgentRequests.hosts(of: response)
    }
}
