#if canImport(FoundationEssentials)
import struct FoundationEssentials.Data  // the protobuf `bytes` type; not the whole of Foundation
#else
import struct Foundation.Data
#endif
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

    public var description: String {
        switch self {
        case .timeout(let text): return text
        case .closed: return "the load-balance client is closed"
        case .badReply(let text): return "bad reply from the agent: \(text)"
        }
    }
}

/// The application's side of load balancing: asks the local agent for a host, reports how the call went, reads
/// routes. UDP, one socket per client, requests matched to replies by sequence number, each with a timeout.
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
    public let agentHost: String
    public let agentPorts: [Int]
    public let timeout: Duration
    private let addresses: [SocketAddress]
    private let ownedGroup: EventLoopGroup?
    private let isClosed = Atomic<Bool>(false)
    /// The loop the client's socket is on. Tasks that prefer it as their executor (`Task(executorPreference:)`)
    /// get their replies without a thread hop.
    public let loop: EventLoop
    private let endpoint: FramedUDPEndpoint
    private let waiters: Waiters
    private let sweepTimer: TimerHandle
    private let sequence = Atomic<UInt32>(0)

    /// Binds a UDP socket on `loop` (or on a private one-thread loop when nil, which polls for `busyPoll` after
    /// each datagram before sleeping: the reply to a request usually comes within microseconds, sooner than a
    /// sleeping thread wakes up; `LoopConfiguration.busyPoll`).
    public init(agentHost: String = "127.0.0.1", agentPorts: [Int] = [8888, 8889, 8890],
                timeout: Duration = .milliseconds(500), loop: EventLoop? = nil,
                busyPoll: Duration = .microseconds(50)) throws {
        precondition(!agentPorts.isEmpty, "agentPorts must not be empty")
        self.agentHost = agentHost
        self.agentPorts = agentPorts
        self.timeout = timeout
        addresses = try agentPorts.map { try SocketAddress(host: agentHost, port: $0) }
        let group: EventLoopGroup? = loop == nil
            ? try EventLoopGroup(ioLoops: 0, configuration: LoopConfiguration(busyPoll: busyPoll)) : nil
        ownedGroup = group
        let runLoop = loop ?? group!.acceptorLoop
        self.loop = runLoop
        let waiters = Waiters(timeoutNs: timeout.nanosecondsSaturated, host: agentHost, timeoutMs: timeout.millisecondsTruncated)
        self.waiters = waiters
        let router = MessageRouter<UDPPeer>()
        try router.on(MessageID.getHostResponse, as: Lars_GetHostResponse.self) { response, message in
            waiters.resume(seq: response.seq, with: .success(.host(response)))
        }
        try router.on(MessageID.getHostByKeyResponse, as: Lars_GetHostResponse.self) { response, message in
            waiters.resume(seq: response.seq, with: .success(.host(response)))
        }
        try router.on(MessageID.apiGetRouteResponse, as: Lars_GetRouteResponse.self) { response, _ in
            waiters.resume(route: RouteKey(modid: response.modid, cmdid: response.cmdid), with: response)
        }
        do {
            endpoint = try FramedUDPEndpoint(loop: runLoop, host: "0.0.0.0", ports: [0], router: router)
        } catch {
            group?.shutdown()
            throw error
        }
        let period = Duration.nanoseconds(Int64(min(max(timeout.nanosecondsSaturated / 10, 1_000_000), 100_000_000)))
        sweepTimer = runLoop.scheduleRepeating(every: period) { waiters.expire() }
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
        waiters.closeAll()
        return ownedGroup
    }

    private func address(modid: Int32, cmdid: Int32) -> SocketAddress {
        let sum = Int(modid) + Int(cmdid)
        let n = addresses.count
        return addresses[((sum % n) + n) % n]
    }

    /// Asks the agent for a host of (modid, cmdid). Throws `LoadBalanceClientError.timeout` when no agent answers
    /// within `timeout`.
    public func getHost(modid: Int32, cmdid: Int32) async throws -> GetHostResult {
        let seq = sequence.wrappingAdd(1, ordering: .relaxed).newValue
        var request = Lars_GetHostRequest()
        request.seq = seq
        request.modid = modid
        request.cmdid = cmdid
        return try await exchangeGetHost(
            FrameParser.encode(messageID: MessageID.getHostRequest.rawValue, body: try request.serializedBytes() as [UInt8]),
            seq: seq, modid: modid, cmdid: cmdid)
    }

    /// Asks the agent for the host of `key`: consistent hashing with bounded loads, so the same key keeps going to
    /// the same host while that host has room (a Switchyard agent only; message id 100).
    public func getHost(modid: Int32, cmdid: Int32, key: [UInt8]) async throws -> GetHostResult {
        let seq = sequence.wrappingAdd(1, ordering: .relaxed).newValue
        var request = Switchyard_Lb_GetHostByKeyRequest()
        request.seq = seq
        request.modid = modid
        request.cmdid = cmdid
        request.key = Data(key)
        return try await exchangeGetHost(
            FrameParser.encode(messageID: MessageID.getHostByKeyRequest.rawValue,
                               body: try request.serializedBytes() as [UInt8]),
            seq: seq, modid: modid, cmdid: cmdid)
    }

    /// `getHost(modid:cmdid:key:)` with the key's UTF-8 bytes.
    public func getHost(modid: Int32, cmdid: Int32, key: String) async throws -> GetHostResult {
        try await getHost(modid: modid, cmdid: cmdid, key: Array(key.utf8))
    }

    private func exchangeGetHost(_ bytes: [UInt8], seq: UInt32, modid: Int32, cmdid: Int32) async throws
        -> GetHostResult
    {
        let destination = address(modid: modid, cmdid: cmdid)
        let reply = try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<Reply, Error>) in
            waiters.add(seq: seq, port: destination.port, continuation)
            endpoint.channels[0].send(bytes, to: destination)
        }
        guard case .host(let response) = reply else { throw LoadBalanceClientError.badReply("not a GetHostResponse") }
        return try GetHostResult(response)
    }

    /// Tells the agent how a call to `host` went: retcode 0 is a success, anything else a failure (1 overload).
    /// Fire and forget.
    public func report(modid: Int32, cmdid: Int32, host: Host, retcode: Int32) {
        var request = Lars_ReportRequest()
        request.modid = modid
        request.cmdid = cmdid
        var info = Lars_HostInfo()
        info.ip = host.wireIP
        info.port = Int32(host.port)
        request.host = info
        request.retcode = retcode
        guard let body: [UInt8] = try? request.serializedBytes() else { return }
        endpoint.channels[0].send(FrameParser.encode(messageID: MessageID.reportRequest.rawValue, body: body),
                                  to: address(modid: modid, cmdid: cmdid))
    }

    /// Tells the agent whether a call to `host` succeeded. Fire and forget.
    public func report(modid: Int32, cmdid: Int32, host: Host, success: Bool) {
        report(modid: modid, cmdid: cmdid, host: host, retcode: success ? 0 : 1)
    }

    /// The hosts of (modid, cmdid) as the agent knows them (empty while it fetches a module it had never seen).
    public func getRoute(modid: Int32, cmdid: Int32) async throws -> [Host] {
        var request = Lars_GetRouteRequest()
        request.modid = modid
        request.cmdid = cmdid
        let bytes = FrameParser.encode(messageID: MessageID.apiGetRouteRequest.rawValue, body: try request.serializedBytes() as [UInt8])
        let destination = address(modid: modid, cmdid: cmdid)
        let key = RouteKey(modid: modid, cmdid: cmdid)
        let reply = try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<Reply, Error>) in
            waiters.add(route: key, port: destination.port, continuation)
            endpoint.channels[0].send(bytes, to: destination)
        }
        guard case .route(let response) = reply else { throw LoadBalanceClientError.badReply("not a GetRouteResponse") }
        return response.host.compactMap { Host(wireIP: $0.ip, wirePort: $0.port) }
    }
}

enum Reply: Sendable {
    case host(Lars_GetHostResponse)
    case route(Lars_GetRouteResponse)
}

/// Requests waiting for their reply, with deadlines. Safe to use from any thread (a Mutex).
final class Waiters: Sendable {
    struct Waiter {
        let continuation: CheckedContinuation<Reply, Error>
        let deadline: UInt64
        let port: UInt16
    }

    struct Table {
        var bySeq: [UInt32: Waiter] = [:]
        /// GetRouteResponse carries no sequence number: waiters are matched by (modid, cmdid).
        var byRoute: [RouteKey: [Waiter]] = [:]
        var closed = false
    }

    private let table = Mutex(Table())
    let timeoutNs: UInt64
    let host: String
    let timeoutMs: Int64

    init(timeoutNs: UInt64, host: String, timeoutMs: Int64) {
        self.timeoutNs = timeoutNs
        self.host = host
        self.timeoutMs = timeoutMs
    }

    func add(seq: UInt32, port: UInt16, _ continuation: CheckedContinuation<Reply, Error>) {
        let waiter = Waiter(continuation: continuation, deadline: SystemInfo.monotonicNanoseconds() &+ timeoutNs,
                            port: port)
        let rejected = table.withLock { t -> Waiter? in
            if t.closed { return waiter }
            // A sequence number reused after 2^32 requests while its first use still waits: fail the old one.
            let old = t.bySeq.updateValue(waiter, forKey: seq)
            return old
        }
        rejected?.continuation.resume(throwing: LoadBalanceClientError.closed)
    }

    func add(route: RouteKey, port: UInt16, _ continuation: CheckedContinuation<Reply, Error>) {
        let waiter = Waiter(continuation: continuation, deadline: SystemInfo.monotonicNanoseconds() &+ timeoutNs,
                            port: port)
        let closed = table.withLock { t -> Bool in
            if t.closed { return true }
            t.byRoute[route, default: []].append(waiter)
            return false
        }
        if closed { continuation.resume(throwing: LoadBalanceClientError.closed) }
    }

    func resume(seq: UInt32, with result: Result<Reply, Error>) {
        table.withLock { $0.bySeq.removeValue(forKey: seq) }?.continuation.resume(with: result)
    }

    func resume(route: RouteKey, with response: Lars_GetRouteResponse) {
        for w in table.withLock({ $0.byRoute.removeValue(forKey: route) }) ?? [] {
            w.continuation.resume(returning: .route(response))
        }
    }

    private func timeoutError(_ w: Waiter) -> LoadBalanceClientError {
        .timeout("no agent answered on \(host):\(w.port) within \(timeoutMs) ms")
    }

    /// Fails the requests whose deadline has passed. Called by the client's timer.
    func expire() {
        let now = SystemInfo.monotonicNanoseconds()
        let expired = table.withLock { t -> [Waiter] in
            var out: [Waiter] = []
            for (seq, w) in t.bySeq where w.deadline <= now {
                out.append(w)
                t.bySeq[seq] = nil
            }
            for (key, list) in t.byRoute {
                let (late, waiting) = (list.filter { $0.deadline <= now }, list.filter { $0.deadline > now })
                out += late
                t.byRoute[key] = waiting.isEmpty ? nil : waiting
            }
            return out
        }
        for w in expired { w.continuation.resume(throwing: timeoutError(w)) }
    }

    func closeAll() {
        let all = table.withLock { t -> [Waiter] in
            t.closed = true
            defer { t.bySeq = [:]; t.byRoute = [:] }
            return Array(t.bySeq.values) + t.byRoute.values.flatMap { $0 }
        }
        for w in all { w.continuation.resume(throwing: LoadBalanceClientError.closed) }
    }
}
