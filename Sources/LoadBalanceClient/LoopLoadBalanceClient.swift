import LarsProtocol
import LoadBalancing
import Messaging
import Reactor
import SwitchyardCore

/// The agent client of code that runs on an event loop (a proxy's connections): one per loop, its socket on that
/// loop, answers handed to a callback on the same loop, so a request costs a datagram each way and no task, lock
/// or thread hop. `LoadBalanceClient` is the one for tasks and any thread.
///
/// ```swift
/// let agent = try LoopLoadBalanceClient(loop: loop)        // on `loop`
/// agent.getHost(modid: 7, cmdid: 1, key: nil) { result in   // runs on `loop`
///     if case .success(.host(let host)) = result { connect(host) }
/// }
/// agent.report(modid: 7, cmdid: 1, host: host, success: true)
/// ```
///
/// Loop thread only (create it on its loop, or hand it over before use). Requests time out after `timeout`
/// (checked by one repeating timer, not one per request) with `LoadBalanceClientError.timeout`; `close()` fails
/// the pending ones with `.closed`.
public final class LoopLoadBalanceClient: @unchecked Sendable {
    // @unchecked Sendable: every field is touched on `loop` only (the router's callbacks run there too).
    public let loop: EventLoop
    public let agentHost: String
    public let agentPorts: [Int]
    public let timeout: Duration
    private let addresses: [SocketAddress]
    private let reportSecret: [UInt8]?
    private let endpoint: FramedUDPEndpoint
    private let pending = PendingHostRequests()
    private var sweepTimer: TimerHandle?
    private var nextSequence: UInt32 = 0
    private let timeoutErrors: [UInt16: LoadBalanceClientError]

    public init(loop: EventLoop, agentHost: String = "127.0.0.1", agentPorts: [Int] = [8888, 8889, 8890],
                timeout: Duration = .milliseconds(500), reportSecret: [UInt8]? = nil) throws {
        precondition(!agentPorts.isEmpty, "agentPorts must not be empty")
        self.loop = loop
        self.agentHost = agentHost
        self.agentPorts = agentPorts
        self.timeout = timeout
        self.reportSecret = reportSecret
        addresses = try agentPorts.map { try SocketAddress(host: agentHost, port: $0) }
        timeoutErrors = AgentRequests.timeoutErrors(agentHost: agentHost, addresses: addresses, timeout: timeout)
        let router = MessageRouter<UDPPeer>()
        let pending = self.pending
        try router.on(MessageID.getHostResponse, as: Lars_GetHostResponse.self) { response, _ in
            pending.answer(response)
        }
        try router.on(MessageID.getHostByKeyResponse, as: Lars_GetHostResponse.self) { response, _ in
            pending.answer(response)
        }
        // The answer to `prefetch`: nothing waits for it.
        try router.on(MessageID.apiGetRouteResponse, as: Lars_GetRouteResponse.self) { _, _ in }
        endpoint = try FramedUDPEndpoint(loop: loop, host: "0.0.0.0", ports: [0], router: router)
        let period = Duration.nanoseconds(Int64(min(max(timeout.nanosecondsSaturated / 10, 1_000_000), 100_000_000)))
        sweepTimer = loop.scheduleRepeating(every: period) {
            pending.expire(now: SystemInfo.monotonicNanoseconds())
        }
    }

    /// Requests waiting for the agent.
    public var pendingCount: Int { pending.count }

    /// Asks the agent for a host of (modid, cmdid): by `key` (consistent hashing with bounded loads, a
    /// Switchyard agent) or, when nil, by the module's own order (Lars's GetHost). `completion` runs on the loop
    /// with the agent's answer, or a `LoadBalanceClientError` (timeout, closed, a bad reply). Loop thread only.
    public func getHost(modid: Int32, cmdid: Int32, key: [UInt8]?,
                        completion: @escaping (Result<GetHostResult, LoadBalanceClientError>) -> Void) {
        loop.assertInLoopThread()
        if pending.isClosed { return completion(.failure(.closed)) }
        nextSequence &+= 1
        let seq = nextSequence
        let frame: [UInt8]
        do {
            frame = try key.map { try AgentRequests.getHost(seq: seq, modid: modid, cmdid: cmdid, key: $0) }
                ?? AgentRequests.getHost(seq: seq, modid: modid, cmdid: cmdid)
        } catch {
            return completion(.failure(.badReply("cannot encode the request: \(error)")))
        }
        let destination = AgentRequests.address(modid: modid, cmdid: cmdid, in: addresses)
        let timeoutError = timeoutErrors[destination.port] ?? .timeout("no agent answered on \(destination)")
        pending.add(seq, deadline: SystemInfo.monotonicNanoseconds() &+ timeout.nanosecondsSaturated,
                    timeoutError: timeoutError, completion: completion)
        frame.withUnsafeBytes { _ = endpoint.channels[0].sendInLoop($0, to: destination) }
    }

    /// Tells the agent whether a call to `host` succeeded (retcode 0, else 1). Fire and forget. Loop thread only.
    public func report(modid: Int32, cmdid: Int32, host: Host, success: Bool) {
        loop.assertInLoopThread()
        guard !pending.isClosed,
              let frame = AgentRequests.report(modid: modid, cmdid: cmdid, host: host, retcode: success ? 0 : 1,
                                               secret: reportSecret) else { return }
        let destination = AgentRequests.address(modid: modid, cmdid: cmdid, in: addresses)
        frame.withUnsafeBytes { _ = endpoint.channels[0].sendInLoop($0, to: destination) }
    }

    /// Asks the agent for the route of (modid, cmdid) without waiting for it: an agent learns a module on its
    /// first request (and answers GetHost "no such module" while it fetches it), so a caller that knows its
    /// modules names them at start. Unlike a GetHost, it picks no host (no call counted against one). Loop thread
    /// only.
    public func prefetch(modid: Int32, cmdid: Int32) {
        loop.assertInLoopThread()
        guard !pending.isClosed, let frame = try? AgentRequests.getRoute(modid: modid, cmdid: cmdid) else { return }
        let destination = AgentRequests.address(modid: modid, cmdid: cmdid, in: addresses)
        frame.withUnsafeBytes { _ = endpoint.channels[0].sendInLoop($0, to: destination) }
    }

    /// Closes the socket and fails the pending requests with `.closed`. Idempotent. Loop thread only.
    public func close() {
        loop.assertInLoopThread()
        if pending.isClosed { return }
        sweepTimer?.cancel()
        sweepTimer = nil
        endpoint.close()
        pending.failAll()
    }
}

/// The GetHost requests of one `LoopLoadBalanceClient` by sequence number. Loop thread only.
private final class PendingHostRequests: @unchecked Sendable {
    // @unchecked Sendable: captured by the router's callbacks and the sweep timer, which run on the client's loop.
    struct Request {
        let deadline: UInt64
        let timeoutError: LoadBalanceClientError
        let completion: (Result<GetHostResult, LoadBalanceClientError>) -> Void
    }
    private var requests: [UInt32: Request] = [:]
    private(set) var isClosed = false

    var count: Int { requests.count }

    func add(_ seq: UInt32, deadline: UInt64, timeoutError: LoadBalanceClientError,
             completion: @escaping (Result<GetHostResult, LoadBalanceClientError>) -> Void) {
        requests[seq] = Request(deadline: deadline, timeoutError: timeoutError, completion: completion)
    }

    func answer(_ response: Lars_GetHostResponse) {
        guard let request = requests.removeValue(forKey: response.seq) else { return }  // late: timed out already
        do {
            request.completion(.success(try GetHostResult(response)))
        } catch {
            request.completion(.failure(error))
        }
    }

    func expire(now: UInt64) {
        guard !requests.isEmpty else { return }
        let late = requests.filter { $0.value.deadline <= now }
        for (seq, request) in late {
            requests[seq] = nil
            request.completion(.failure(request.timeoutError))
        }
    }

    func failAll() {
        isClosed = true
        let all = requests
        requests = [:]
        for request in all.values { request.completion(.failure(.closed)) }
    }
}
