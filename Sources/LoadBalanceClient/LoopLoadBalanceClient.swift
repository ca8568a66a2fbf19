import LarsProtocol
import LoadBalancing
import Messaging
import Reactor
import Synchronization
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
///
/// Reports wait for the end of the loop's iteration and go out together, one datagram each (a Lars frame per
/// datagram) in one `sendmmsg(2)`: a proxy whose loop ends several connections in one wake-up makes one system call
/// for their reports (at most ``maxQueuedReports`` wait; one more sends them at once). `close()` sends what waits.
///
/// Once the agent has answered a batch GetHost (a Switchyard agent), reports are tallied instead: the outcomes of
/// many calls go in one report batch (id 106) per module, each host's in call order, so the agent counts them as the
/// single reports. A success waits up to ``reportHold`` for others; a failure goes at the end of the iteration with
/// everything held before it (overload is noticed as soon as with single reports). A proxy that ends thousands of
/// connections a second sends a hundred datagrams, not thousands: less work for it and for the agent.
public final class LoopLoadBalanceClient: @unchecked Sendable {
    // @unchecked Sendable: every field is touched on `loop` only (the router's callbacks run there too).
    public let loop: EventLoop
    let agents: AgentEndpoints
    public var agentHost: String { agents.host }
    public var agentPorts: [Int] { agents.ports }
    public var timeout: Duration { agents.timeout }
    private let reportSecret: [UInt8]?
    let endpoint: FramedUDPEndpoint
    private let pending = PendingLoopRequests<GetHostResult, Void>()
    let pendingBatches = PendingLoopRequests<[GetHostResult], [HostQuery]>()  // LoopLoadBalanceClient+Batch.swift
    private var sweepTimer: TimerHandle?
    var nextSequence: UInt32 = 0
    /// Reports of this loop iteration, sent by `flushReports()` (posted to run after the iteration's events).
    private var queuedReports = DatagramBatch()
    /// For each queued datagram, the reports it carries (0: a batched GetHost), for the report counters.
    private var queuedReportCounts: [Int] = []
    /// What runs at the end of the iteration before the flush (``atEndOfIteration(_:)``).
    private var endOfIteration: [() -> Void] = []
    private var flushPosted = false
    private let reportsSent = Atomic<Int>(0)
    private let reportsDropped = Atomic<Int>(0)
    private let reportBatches = Atomic<Int>(0)
    /// Reports held for report batches (once ``agentTakesReportBatches``), and the timer that sends them.
    private var tally = ReportTally()
    private var holdTimer: TimerHandle?
    private let batchSupport = BatchSupport()
    /// How long a success waits in the tally for others before its report batch is sent.
    public let reportHold: Duration

    /// Reports queued at most before they are sent at once (without waiting for the end of the loop's iteration).
    public static let maxQueuedReports = 64

    public init(loop: EventLoop, agentHost: String = "127.0.0.1", agentPorts: [Int] = [8888, 8889, 8890],
                timeout: Duration = .milliseconds(500), reportSecret: [UInt8]? = nil,
                reportHold: Duration = .milliseconds(10)) throws {
        self.loop = loop
        self.reportHold = reportHold
        agents = try AgentEndpoints(host: agentHost, ports: agentPorts, timeout: timeout)
        self.reportSecret = reportSecret
        let router = MessageRouter<UDPPeer>()
        let pending = self.pending
        try router.on(MessageID.getHostResponse, as: Lars_GetHostResponse.self) { response, _ in
            pending.answer(response.seq) { _ in try GetHostResult(response) }
        }
        try router.on(MessageID.getHostByKeyResponse, as: Lars_GetHostResponse.self) { response, _ in
            pending.answer(response.seq) { _ in try GetHostResult(response) }
        }
        let pendingBatches = self.pendingBatches
        let batchSupport = self.batchSupport
        try router.on(MessageID.getHostBatchResponse, as: Switchyard_Lb_GetHostBatchResponse.self) { response, _ in
            if response.retcode == LarsReturnCode.success { batchSupport.answered = true }
            pendingBatches.answer(response.seq) { queries in try AgentRequests.results(of: response, for: queries) }
        }
        // The answer to `prefetch`: nothing waits for it.
        try router.on(MessageID.apiGetRouteResponse, as: Lars_GetRouteResponse.self) { _, _ in }
        endpoint = try FramedUDPEndpoint(loop: loop, host: "0.0.0.0", ports: [0], router: router)
        let period = Duration.nanoseconds(Int64(min(max(timeout.nanosecondsSaturated / 10, 1_000_000), 100_000_000)))
        sweepTimer = loop.scheduleRepeating(every: period) {
            let now = SystemInfo.monotonicNanoseconds()
            pending.expire(now: now)
            pendingBatches.expire(now: now)
        }
    }

    /// Requests waiting for the agent.
    public var pendingCount: Int { pending.count }

    /// Asks the agent for a host of (modid, cmdid): by `key` (consistent hashing with bounded loads, a
    /// Switchyard agent) or, when nil, by the module's own order (Lars's GetHost). `completion` runs on the loop
    /// with the agent's answer, or a `LoadBalanceClientError` (timeout, closed, a bad reply). With `batched` the
    /// request waits for the end of the loop's iteration and leaves with the reports and other batched requests in
    /// one system call (for requests nobody waits for now: a proxy's spare hosts). Loop thread only.
    public func getHost(modid: Int32, cmdid: Int32, key: [UInt8]?, batched: Bool = false,
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
        let destination = agents.address(modid: modid, cmdid: cmdid)
        let timeoutError = agents.timeoutError(destination)
        pending.add(seq, context: (), deadline: SystemInfo.monotonicNanoseconds() &+ timeout.nanosecondsSaturated,
                    timeoutError: timeoutError, completion: completion)
        if batched {
            queue(frame, to: destination, reports: 0)
        } else {
            frame.withUnsafeBytes { _ = endpoint.channels[0].sendInLoop($0, to: destination) }
        }
    }

    /// Tells the agent whether a call to `host` succeeded (retcode 0, else 1). Fire and forget: the report is
    /// queued and sent with the others of this loop iteration when the iteration's events are handled (or at once
    /// when ``maxQueuedReports`` wait); to an agent that takes report batches, a success is tallied for up to
    /// ``reportHold`` and a failure sent at the end of the iteration with what was tallied before it. Loop thread
    /// only.
    public func report(modid: Int32, cmdid: Int32, host: Host, success: Bool) {
        loop.assertInLoopThread()
        guard !pending.isClosed else { return }
        if batchSupport.answered {
            let full = tally.add(ReportTally.Module(modid: modid, cmdid: cmdid), host: host, success: success)
            if full {
                flushReports()
            } else if !success {
                postFlush()
            } else if holdTimer == nil {
                holdTimer = loop.schedule(after: reportHold) { [weak self] in
                    guard let self else { return }
                    holdTimer = nil
                    flushReports()
                }
            }
            return
        }
        guard let frame = AgentRequests.report(modid: modid, cmdid: cmdid, host: host, retcode: success ? 0 : 1,
                                               secret: reportSecret) else { return }
        queue(frame, to: agents.address(modid: modid, cmdid: cmdid), reports: 1)
    }

    /// The agent has answered a batch GetHost (id 104), so it takes report batches (id 106): reports are tallied
    /// from then on. Loop thread only.
    public var agentTakesReportBatches: Bool { batchSupport.answered }

    /// Runs `body` at the end of this loop iteration, just before the queued reports and batched requests are sent,
    /// so what it queues leaves with them in the same system call (a proxy's spare-host requests). Loop thread only.
    public func atEndOfIteration(_ body: @escaping () -> Void) {
        loop.assertInLoopThread()
        endOfIteration.append(body)
        postFlush()
    }

    /// Queues a datagram for the end of the loop's iteration (``flushReports()``).
    func queue(_ frame: [UInt8], to destination: SocketAddress, reports: Int) {
        queuedReports.append(frame, to: destination)
        queuedReportCounts.append(reports)
        if queuedReports.count >= Self.maxQueuedReports {
            flushReports()
        } else {
            postFlush()
        }
    }

    /// Posts the end-of-iteration task (once per iteration): the `atEndOfIteration` bodies, then the flush.
    private func postFlush() {
        if !flushPosted {
            flushPosted = true
            loop.execute { [self] in
                let bodies = endOfIteration
                endOfIteration.removeAll()
                for body in bodies { body() }
                flushPosted = false
                // Held successes keep waiting for their hold, unless a failure came after them.
                if tally.holdsFailure { takeTally() }
                sendQueued()
            }
        }
    }

    /// Sends the queued and held reports (and batched requests) now, in one system call. Loop thread only.
    public func flushReports() {
        loop.assertInLoopThread()
        takeTally()
        sendQueued()
    }

    /// Queues a report batch per module of the tally, and empties it.
    private func takeTally() {
        holdTimer?.cancel()
        holdTimer = nil
        guard !tally.isEmpty else { return }
        for (module, runs) in tally.take() {
            let carried = runs.reduce(0) { $0 + $1.count }
            guard let frame = ReportTally.frame(module, runs: runs, secret: reportSecret) else {
                reportsDropped.wrappingAdd(carried, ordering: .relaxed)
                continue
            }
            queuedReports.append(frame, to: agents.address(modid: module.modid, cmdid: module.cmdid))
            queuedReportCounts.append(carried)
        }
    }

    private func sendQueued() {
        guard !queuedReports.isEmpty else { return }
        var refused = [Bool](repeating: false, count: queuedReports.count)
        endpoint.channels[0].sendInLoop(queuedReports, refused: &refused)
        let reports = queuedReportCounts.reduce(0, +)
        let reportsRefused = zip(queuedReportCounts, refused).reduce(0) { $0 + ($1.1 ? $1.0 : 0) }
        reportsSent.wrappingAdd(reports - reportsRefused, ordering: .relaxed)
        reportsDropped.wrappingAdd(reportsRefused, ordering: .relaxed)
        if reports > 0 { reportBatches.wrappingAdd(1, ordering: .relaxed) }
        queuedReports.removeAll()
        queuedReportCounts.removeAll(keepingCapacity: true)
    }

    /// Reports handed to the kernel, refused by it (dropped: the agent never sees them), and the system calls that
    /// sent them. Safe to call from any thread.
    public var reportStatistics: ReportCounts {
        ReportCounts(sent: reportsSent.load(ordering: .relaxed), dropped: reportsDropped.load(ordering: .relaxed),
                     batches: reportBatches.load(ordering: .relaxed))
    }

    /// Asks the agent for the route of (modid, cmdid) without waiting for it: an agent learns a module on its
    /// first request (and answers GetHost "no such module" while it fetches it), so a caller that knows its
    /// modules names them at start. Unlike a GetHost, it picks no host (no call counted against one). Loop thread
    /// only.
    public func prefetch(modid: Int32, cmdid: Int32) {
        loop.assertInLoopThread()
        guard !pending.isClosed, let frame = try? AgentRequests.getRoute(modid: modid, cmdid: cmdid) else { return }
        let destination = agents.address(modid: modid, cmdid: cmdid)
        frame.withUnsafeBytes { _ = endpoint.channels[0].sendInLoop($0, to: destination) }
    }

    /// Closes the socket and fails the pending requests with `.closed`. Idempotent. Loop thread only.
    public func close() {
        loop.assertInLoopThread()
        if pending.isClosed { return }
        flushReports()
        sweepTimer?.cancel()
        sweepTimer = nil
        endpoint.close()
        pending.failAll()
        pendingBatches.failAll()
    }
}

/// Set once the agent answers a batch GetHost (by the router's callback, on the client's loop).
private final class BatchSupport: @unchecked Sendable {
    // @unchecked Sendable: touched on the client's loop only.
    var answered = false
}

/// The reports of a `LoopLoadBalanceClient` so far.
public struct ReportCounts: Sendable, Hashable {
    /// Reports (calls) the kernel took, alone or in report batches.
    public var sent = 0
    /// Reports the kernel refused (a full socket buffer, an unreachable port): dropped.
    public var dropped = 0
    /// System calls that sent them (one per loop iteration that had any, or per hold of a tally).
    public var batches = 0

    public init(sent: Int = 0, dropped: Int = 0, batches: Int = 0) {
        self.sent = sent
        self.dropped = dropped
        self.batches = batches
    }
}

/// The requests of one `LoopLoadBalanceClient` waiting for the agent, by sequence number: single GetHost requests
/// (`Context` is `Void`) and batches (`Context` is their queries). Both kinds share the client's sequence numbers, so
/// a reply can never answer the other kind. Loop thread only.
final class PendingLoopRequests<Value, Context>: @unchecked Sendable {
    // @unchecked Sendable: captured by the router's callbacks and the sweep timer, which run on the client's loop.
    typealias Completion = (Result<Value, LoadBalanceClientError>) -> Void
    private struct Request {
        let context: Context
        let deadline: UInt64
        let timeoutError: LoadBalanceClientError
        let completion: Completion
    }
    private var requests: [UInt32: Request] = [:]
    private(set) var isClosed = false

    var count: Int { requests.count }

    func add(_ seq: UInt32, context: Context, deadline: UInt64, timeoutError: LoadBalanceClientError,
             completion: @escaping Completion) {
        requests[seq] = Request(context: context, deadline: deadline, timeoutError: timeoutError,
                                completion: completion)
    }

    /// Completes the request of `seq` with what `result` makes of its context; a late reply (timed out already)
    /// is dropped.
    func answer(_ seq: UInt32, _ result: (Context) throws -> Value) {
        guard let request = requests.removeValue(forKey: seq) else { return }
        do {
            request.completion(.success(try result(request.context)))
        } catch let error as LoadBalanceClientError {
            request.completion(.failure(error))
        } catch {
            request.completion(.failure(.badReply("\(error)")))
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
