import LarsProtocol
import LoadBalancing
import Logging
import Messaging
import Reactor
import ServiceLifecycle
import SwitchyardCore
import Synchronization
import Dispatch

/// Errors of the agent.
public enum LoadBalanceAgentError: Error, CustomStringConvertible {
    /// The configuration cannot be used.
    case badConfiguration(AgentConfigurationError)
    /// `start()` was called after `shutdown()`.
    case shutDown
    /// The route cache file exists but cannot be read.
    case unreadableRouteCache(path: String, reason: String)

    public var description: String {
        switch self {
        case .badConfiguration(let error): return "bad agent configuration: \(error)"
        case .shutDown: return "the agent was shut down"
        case .unreadableRouteCache(let path, let reason): return "cannot read route cache \(path): \(reason)"
        }
    }
}

/// The load-balancing agent (Lars's lb_agent): three UDP ports answering GetHost, Report and GetRoute for local
/// clients, a `RouteBalancer` per (modid, cmdid), routes pulled from the name service (and pushed by it), call
/// results aggregated and sent to the reporter.
///
/// ```
///  client API --UDP--> [8888 | 8889 | 8890] --+
///                                              |  agent loop: AgentLoopState -> AgentCore (pure) -> actions
///  name service <--TCP (GetRoute 1/2)----------+
///  reporter     <--TCP (ReportStatus 3)--------+
/// ```
///
/// This type is the shell: it owns the UDP endpoint, the name service and reporter clients, the timers and the
/// route cache writer, and runs everything on one loop of the group (the agent's), where `AgentLoopState` feeds
/// the pure `AgentCore` and performs its actions, so the request path takes no lock. A lost name service never
/// stops GetHost answers: the agent serves the routes it knows (or read from its route file) and reconnects with
/// backoff.
///
/// A `Service`: `run()` starts it (when `start()` was not called), serves until the group's graceful shutdown, then
/// sends the last reports and stops. Safe to call from any thread (but the blocking `shutdown()` not from the
/// agent's loop, nor from async code).
public final class LoadBalanceAgent: Service, Sendable {
    public let configuration: AgentConfiguration
    /// The loop the agent runs on.
    public let loop: EventLoop
    private let logger: Logger
    let loopState: AgentLoopState

    private struct Running: Sendable {
        var endpoint: FramedUDPEndpoint
        var names: FramedClient
        var reporter: FramedClient
        var timers: [TimerHandle]
    }

    /// initial --start()--> running --shutdown()--> stopped (Hummingbird's `Server.State` in small).
    private enum State {
        case initial
        case running(Running)
        case stopped
    }
    private let state = Mutex(State.initial)

    /// Prepares the agent on one loop of `group` (nothing is bound until `start()`).
    public init(group: EventLoopGroup, configuration: AgentConfiguration, logger: Logger) {
        self.configuration = configuration
        self.logger = logger
        loop = group.next()
        loopState = AgentLoopState(loop: loop, configuration: configuration, logger: logger)
    }

    /// Validates the configuration, loads the route file, binds the UDP ports, connects to the name service and
    /// the reporter, starts the timers. Returns the bound UDP addresses in the order of `configuration.ports`.
    /// Idempotent: a second call returns the same addresses. Throws after `shutdown()`.
    @discardableResult
    public func start() throws -> [SocketAddress] {
        try state.withLock { state throws -> [SocketAddress] in
            switch state {
            case .running(let running):
                return running.endpoint.localAddresses
            case .stopped:
                throw LoadBalanceAgentError.shutDown
            case .initial:
                let running = try startRunning()
                state = .running(running)
                return running.endpoint.localAddresses
            }
        }
    }

    private func startRunning() throws -> Running {
        do {
            try configuration.validate()
        } catch {
            throw LoadBalanceAgentError.badConfiguration(error)
        }
        var cached: [RouteKey: CachedRoute] = [:]
        if let file = loopState.cacheWriter?.file {
            do {
                cached = try file.loadRoutes()
            } catch {
                throw LoadBalanceAgentError.unreadableRouteCache(path: file.path, reason: "\(error)")
            }
        }
        let loopState = self.loopState
        let namesRouter = MessageRouter<TCPConnection>()
        try namesRouter.on(MessageID.getRouteResponse, as: Lars_GetRouteResponse.self) { response, _ in
            loopState.routeArrived(response)
        }
        let names = try FramedClient(
            loop: loop,
            configuration: upstreamConfiguration(host: configuration.nameServiceHost,
                                                 port: configuration.nameServicePort,
                                                 alternates: configuration.nameServiceAlternates),
            router: namesRouter, logger: logger,
            onConnect: { _ in loopState.nameServiceConnected() },
            onClose: { _ in loopState.nameServiceLost() },
            onConnectFailed: { _ in loopState.nameServiceLost() })
        let reporter = try FramedClient(
            loop: loop,
            configuration: upstreamConfiguration(host: configuration.reporterHost, port: configuration.reporterPort,
                                                 alternates: configuration.reporterAlternates),
            router: MessageRouter<TCPConnection>(), logger: logger)
        // Posted before the endpoint registers its sockets (same queue, in order): no request sees an empty table
        // or a missing link.
        let routes = cached
        loop.execute { loopState.install(names: names, reporter: reporter, cachedRoutes: routes) }

        let router = MessageRouter<UDPPeer>()
        try router.on(MessageID.getHostRequest, as: Lars_GetHostRequest.self) { request, message in
            loopState.getHost(seq: request.seq, modid: request.modid, cmdid: request.cmdid, key: nil,
                              from: message.connection)
        }
        try router.on(MessageID.getHostByKeyRequest, as: Switchyard_Lb_GetHostByKeyRequest.self) { request, message in
            loopState.getHost(seq: request.seq, modid: request.modid, cmdid: request.cmdid,
                              key: BoundedLoadRing.hash(request.key), from: message.connection)
        }
        try router.on(MessageID.getHostBatchRequest, loopState.getHostBatch)
        try router.on(MessageID.reportRequest, loopState.report)
        try router.on(MessageID.reportBatchRequest, loopState.reportBatch)
        try router.on(MessageID.apiGetRouteRequest, loopState.getRoute)
        let endpoint = try FramedUDPEndpoint(loop: loop, host: configuration.host, ports: configuration.ports,
                                             router: router, logger: logger)
        names.connect()
        reporter.connect()
        let refresh = min(configuration.routeRetryInterval, .seconds(1))
        var timers = [
            loop.scheduleRepeating(every: configuration.reportInterval) { loopState.flushReports() },
            loop.scheduleRepeating(every: refresh) { loopState.refreshRoutes() },
        ]
        if loopState.cacheWriter != nil {
            timers.append(loop.scheduleRepeating(every: configuration.routeCacheInterval) {
                loopState.saveCacheIfChanged()
            })
        }
        logger.info("agent started", metadata: [
            "udp.addresses": "\(endpoint.localAddresses.map(\.description).joined(separator: ","))",
            "names.address": "\(configuration.nameServiceEndpoints.map(\.description).joined(separator: ","))",
            "reporter.address": "\(configuration.reporterEndpoints.map(\.description).joined(separator: ","))",
            "cache.routes": "\(cached.count)",
            "report.caller": "\(IPv4Endpoint(ip: configuration.caller, port: 0).address)",
        ])
        if configuration.bindsEveryAddress {
            if configuration.allowedSources == .any {
                logger.warning("""
                    agent bound to every address and answering any source: it trusts its network (anyone who can \
                    reach these ports can read routes and report failures that overload hosts)
                    """)
            } else {
                logger.warning("""
                    agent bound to every address; only callers allowed by its source filter are answered \
                    (--allow-remote answers everyone, as Lars's agent does)
                    """)
            }
        }
        return Running(endpoint: endpoint, names: names, reporter: reporter, timers: timers)
    }

    private func upstreamConfiguration(host: String, port: Int, alternates: [ClientEndpoint])
        -> FramedClientConfiguration
    {
        var client = ClientConfiguration(host: host, port: port, connectTimeout: .seconds(2), reconnect: true,
                                         initialBackoff: configuration.initialBackoff,
                                         maxBackoff: configuration.maxBackoff)
        client.alternates = alternates
        // A silent server is left only when there is another to go to (a single one is waited for, as Lars's agent
        // does: Lars's servers do not answer heartbeats).
        return FramedClientConfiguration(client: client, heartbeatInterval: configuration.upstreamHeartbeatInterval,
                                         silenceTimeout: alternates.isEmpty ? nil : configuration.upstreamSilenceTimeout)
    }

    /// The bound UDP addresses (empty before `start()` and after `shutdown()`).
    public var localAddresses: [SocketAddress] {
        state.withLock { state in
            guard case .running(let running) = state else { return [] }
            return running.endpoint.localAddresses
        }
    }

    // MARK: Service

    /// Starts the agent (unless `start()` was called), serves until the graceful shutdown of the `ServiceGroup`
    /// (or cancellation), then stops as `shutdown()` does.
    public func run() async throws {
        try start()
        try? await gracefulShutdown()
        await shutdown()
    }

    /// Marks the agent stopped and stops answering; returns what must still be stopped (nil when it was not
    /// running).
    private func stopAnswering() -> Running? {
        let running = state.withLock { state -> Running? in
            defer { state = .stopped }
            guard case .running(let running) = state else { return nil }
            return running
        }
        guard let running else { return nil }
        running.endpoint.close()
        for timer in running.timers { timer.cancel() }
        running.names.disconnect()
        return running
    }

    /// Stops answering, sends the last aggregated reports, disconnects, hands the route file its last snapshot
    /// (when a route changed) and waits for it to be written, at most `routeCacheShutdownTimeout`. Idempotent.
    /// Waits without holding the caller's thread.
    public func shutdown() async {
        guard let running = stopAnswering() else { return }
        let loopState = self.loopState
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            let once = ResumeOnce(continuation)
            loop.execute {
                loopState.flushReports()
                loopState.saveCacheIfChanged()
                running.reporter.disconnect()
                loopState.uninstall()
                once.resume()
            }
        }
        if let writer = loopState.cacheWriter, await !writer.flush(timeout: configuration.routeCacheShutdownTimeout) {
            logCacheNotWritten(writer)
        }
    }

    /// Stops answering, sends the last aggregated reports, disconnects, and waits for the route file to be
    /// written, at most `routeCacheShutdownTimeout`. Idempotent. Blocks the calling thread meanwhile: not on the
    /// agent's loop, not from async code (use `await shutdown()` there).
    public func shutdown() {
        guard let running = stopAnswering() else { return }
        let loopState = self.loopState
        loop.execute {
            loopState.flushReports()
            loopState.saveCacheIfChanged()
            running.reporter.disconnect()
            loopState.uninstall()
        }
        guard let writer = loopState.cacheWriter else { return }
        // The snapshot is taken on the loop: wait for that task, then for the write (both within the bound).
        let deadline = ContinuousClock.now.advanced(by: configuration.routeCacheShutdownTimeout)
        let posted = DispatchSemaphore(value: 0)
        loop.execute { posted.signal() }
        _ = posted.wait(timeout: .now() + configuration.routeCacheShutdownTimeout.timeInterval)
        let left = max(.zero, deadline - ContinuousClock.now)
        if !writer.flushBlocking(timeout: left) { logCacheNotWritten(writer) }
    }

    private func logCacheNotWritten(_ writer: RouteCacheWriter) {
        logger.info("route cache not written within the shutdown bound; the file keeps its previous routes",
                    metadata: ["file.path": "\(writer.file.path)",
                               "shutdown.timeout": "\(configuration.routeCacheShutdownTimeout)"])
    }

    /// Route cache files written so far (0 without a cache file). Safe to call from any thread.
    public var routeCacheWrites: Int { loopState.cacheWriter?.writes ?? 0 }

    // MARK: Inspection

    /// A copy of the balancer of (modid, cmdid), for tests and tools; nil when the agent does not know the module
    /// (or its loop has stopped). Waits for the agent's loop; not on it.
    public func balancerSnapshot(modid: Int32, cmdid: Int32) async -> RouteBalancer? {
        await onLoop { $0.balancer(for: RouteKey(modid: modid, cmdid: cmdid)) } ?? nil
    }

    /// The agent's counters (also published through swift-metrics once per report interval); nil when its loop
    /// has stopped. Waits for the agent's loop; not on it.
    public func statistics() async -> AgentStatistics? {
        await onLoop { $0.statistics }
    }

    private func onLoop<T: Sendable>(_ body: @escaping @Sendable (AgentLoopState) -> T) async -> T? {
        let loopState = self.loopState
        return await withCheckedContinuation { (continuation: CheckedContinuation<T?, Never>) in
            let once = ResumeOnce(continuation, ifReleased: nil)
            loop.execute { once.resume(returning: body(loopState)) }
        }
    }
}

/// A continuation resumed exactly once: by `resume`, or with the default value when the box is released first (a
/// task posted to a loop that has stopped is released without running, and must not leave its caller waiting).
final class ResumeOnce<T: Sendable>: Sendable {
    private let state: Mutex<CheckedContinuation<T, Never>?>
    private let ifReleased: T

    init(_ continuation: CheckedContinuation<T, Never>, ifReleased: T) {
        state = Mutex(continuation)
        self.ifReleased = ifReleased
    }

    func resume(returning value: T) {
        state.withLock { c -> CheckedContinuation<T, Never>? in
            defer { c = nil }
            return c
        }?.resume(returning: value)
    }

    deinit { resume(returning: ifReleased) }
}

extension ResumeOnce where T == Void {
    convenience init(_ continuation: CheckedContinuation<Void, Never>) { self.init(continuation, ifReleased: ()) }
    func resume() { resume(returning: ()) }
}
