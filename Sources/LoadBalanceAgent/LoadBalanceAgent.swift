import LarsProtocol
import LoadBalancing
import Logging
import Messaging
import Reactor
import Synchronization

/// Errors of the agent.
public enum LoadBalanceAgentError: Error, CustomStringConvertible {
    /// The configuration cannot be used.
    case badConfiguration([String])
    /// `start()` was called twice, or after `shutdown()`.
    case alreadyStarted
    /// The route cache file exists but cannot be read.
    case unreadableRouteCache(path: String, reason: String)

    public var description: String {
        switch self {
        case .badConfiguration(let problems): return "bad agent configuration: " + problems.joined(separator: "; ")
        case .alreadyStarted: return "the agent was already started"
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
///                                              |  agent loop: balancers, route table, report aggregation
///  name service <--TCP (GetRoute 1/2)----------+
///  reporter     <--TCP (ReportStatus 3)--------+
/// ```
///
/// Everything runs on one loop of the group (the agent's), so the request path takes no lock. A lost name
/// service never stops GetHost answers: the agent serves the routes it knows (or read from its route file) and
/// reconnects with backoff. Safe to call from any thread (but `shutdown()` not from the agent's loop).
public final class LoadBalanceAgent: Sendable {
    public let configuration: AgentConfiguration
    /// The loop the agent runs on.
    public let loop: EventLoop
    private let logger: Logger
    let core: AgentCore

    private struct Running {
        var endpoint: FramedUDPEndpoint?
        var names: FramedClient?
        var reporter: FramedClient?
        var timers: [TimerHandle] = []
        var started = false
    }
    private let running = Mutex(Running())

    /// Prepares the agent on one loop of `group` (nothing is bound until `start()`).
    public init(group: EventLoopGroup, configuration: AgentConfiguration, logger: Logger) {
        self.configuration = configuration
        self.logger = logger
        loop = group.next()
        core = AgentCore(loop: loop, configuration: configuration, logger: logger)
    }

    /// Loads the route file, binds the UDP ports, connects to the name service and the reporter, starts the
    /// timers. Returns the bound UDP addresses in the order of `configuration.ports`.
    @discardableResult
    public func start() throws -> [SocketAddress] {
        let problems = configuration.problems
        if !problems.isEmpty { throw LoadBalanceAgentError.badConfiguration(problems) }
        try running.withLock { r in
            if r.started { throw LoadBalanceAgentError.alreadyStarted }
            r.started = true
        }
        var cached: [RouteKey: [Host]] = [:]
        if let cache = core.cache {
            do {
                cached = try cache.load()
            } catch {
                throw LoadBalanceAgentError.unreadableRouteCache(path: cache.path, reason: "\(error)")
            }
        }
        let core = self.core
        let routes = cached
        // Posted before the endpoint registers its sockets (same queue, in order): no request sees an empty table.
        loop.execute { core.loadCachedRoutes(routes) }

        // The name service and reporter links exist (unconnected) before any datagram can reach the core, which
        // reads them on its loop.
        let namesRouter = MessageRouter<TCPConnection>()
        try namesRouter.on(MessageID.getRouteResponse, as: Lars_GetRouteResponse.self) { response, _ in
            core.routeArrived(response)
        }
        let names = try FramedClient(
            loop: loop,
            configuration: FramedClientConfiguration(client: clientConfiguration(
                host: configuration.nameServiceHost, port: configuration.nameServicePort)),
            router: namesRouter,
            onConnect: { _ in core.nameServiceConnected() },
            onClose: { _ in core.nameServiceLost() },
            onConnectFailed: { _ in core.nameServiceLost() })
        let reporter = try FramedClient(
            loop: loop,
            configuration: FramedClientConfiguration(client: clientConfiguration(
                host: configuration.reporterHost, port: configuration.reporterPort)),
            router: MessageRouter<TCPConnection>())
        core.names = names
        core.reporter = reporter

        let router = MessageRouter<UDPPeer>()
        try router.on(MessageID.getHostRequest, as: Lars_GetHostRequest.self) { request, message in
            core.getHost(seq: request.seq, modid: request.modid, cmdid: request.cmdid, key: nil,
                         from: message.connection)
        }
        try router.on(MessageID.getHostByKeyRequest, as: Switchyard_Lb_GetHostByKeyRequest.self) { request, message in
            core.getHost(seq: request.seq, modid: request.modid, cmdid: request.cmdid,
                         key: BoundedLoadRing.hash(request.key), from: message.connection)
        }
        try router.on(MessageID.reportRequest, as: Lars_ReportRequest.self) { request, _ in
            core.report(request)
        }
        try router.on(MessageID.apiGetRouteRequest, as: Lars_GetRouteRequest.self) { request, message in
            core.getRoute(request, from: message.connection)
        }
        let endpoint = try FramedUDPEndpoint(loop: loop, host: configuration.host, ports: configuration.ports,
                                             router: router, logger: logger)
        names.connect()
        reporter.connect()
        let refresh = min(configuration.routeRetryInterval, .seconds(1))
        let timers = [
            loop.scheduleRepeating(every: configuration.reportInterval) { core.flushReports() },
            loop.scheduleRepeating(every: refresh) { core.refreshRoutes() },
        ]
        running.withLock { r in
            r.endpoint = endpoint
            r.names = names
            r.reporter = reporter
            r.timers = timers
        }
        let addresses = endpoint.localAddresses
        logger.info("agent started", metadata: [
            "udp": "\(addresses.map(\.description).joined(separator: ","))",
            "names": "\(configuration.nameServiceHost):\(configuration.nameServicePort)",
            "reporter": "\(configuration.reporterHost):\(configuration.reporterPort)",
            "cached.routes": "\(cached.count)",
        ])
        return addresses
    }

    private func clientConfiguration(host: String, port: Int) -> ClientConfiguration {
        ClientConfiguration(host: host, port: port, connectTimeout: .seconds(2), reconnect: true,
                            initialBackoff: configuration.initialBackoff, maxBackoff: configuration.maxBackoff,
                            logger: logger)
    }

    /// The bound UDP addresses (empty before `start()`).
    public var localAddresses: [SocketAddress] { running.withLock { $0.endpoint?.localAddresses ?? [] } }

    /// Stops answering, sends the last aggregated reports, disconnects, and waits for the route file to be
    /// written. Idempotent. Not on the agent's loop.
    public func shutdown() {
        let r = running.withLock { r -> Running in
            defer { r = Running(started: true) }
            return r
        }
        r.endpoint?.close()
        for t in r.timers { t.cancel() }
        let core = self.core
        let reporter = r.reporter
        loop.execute {
            core.flushReports()
            reporter?.disconnect()
        }
        r.names?.disconnect()
        core.flushCache()
    }

    /// A copy of the balancer of (modid, cmdid), for tests and tools; nil when the agent does not know the module.
    /// Waits for the agent's loop; not on it.
    public func balancerSnapshot(modid: Int32, cmdid: Int32) async -> RouteBalancer? {
        let core = self.core
        return await withCheckedContinuation { continuation in
            loop.execute { continuation.resume(returning: core.balancer(for: RouteKey(modid: modid, cmdid: cmdid))) }
        }
    }
}
