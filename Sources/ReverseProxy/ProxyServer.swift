#if canImport(Glibc)
import Glibc
#endif
import Dispatch
import LoadBalanceClient
import LoadBalancing
import Logging
import Metrics
import Reactor
import ServiceLifecycle
import SwitchyardCore
import Synchronization

/// A TCP reverse proxy that picks each connection's backend through the local load-balancing agent: clients that
/// cannot run an agent connect to one address; for every new connection the proxy asks the agent for a host of
/// the route's module, connects (trying the next host after a failure, reported to the agent), relays bytes both
/// ways with backpressure and half-close (`TCPTunnel`: splice or read/write), and reports the outcome, so a failing
/// backend goes to overload and is avoided exactly as for callers that use the agent themselves.
///
///     client --accept (TCPListener)--> ProxySession: GetHost (LoopLoadBalanceClient, the loop's own socket)
///            --TCPDialer--> backend --TCPTunnel--> bytes both ways --end--> Report (success or failure)
///
/// Everything of one connection happens on one loop, with no task or lock on its way (the agent client of each loop
/// answers on that loop). A `Service`: ``run()`` starts (unless ``start()`` did) and serves until graceful
/// shutdown, then stops accepting and lets open connections finish for up to `drainTimeout`.
public final class ProxyServer: Service, Sendable {
    public let configuration: ProxyConfiguration
    public let group: EventLoopGroup
    let logger: Logger
    let counters: ProxyCounters
    private let state = Mutex<RunState>(RunState())
    private let nextID = Atomic<UInt64>(1)
    private let refusals = Mutex(LogEpisode())
    private let idleCloses = Mutex(LogEpisode())
    private let drained = Mutex<DispatchSemaphore?>(nil)

    private struct RunState {
        var started = false
        var stopped = false
        var listeners: [TCPListener] = []
        var addresses: [SocketAddress] = []
        var loops: [ProxyLoop] = []
    }

    /// - Parameters:
    ///   - group: The loops of the connections (the acceptor loop accepts, the I/O loops serve).
    ///   - configuration: Routes, the agent, limits (see ``ProxyConfiguration/validate()``).
    ///   - logger: Start, stop, refusals once per episode; nothing per connection above debug.
    ///   - metricsFactory: Where the counters go besides ``statistics`` (swift-metrics; the global factory, a no-op
    ///     until the executable bootstraps one), with the dimension `proxy`: the logger's label.
    public init(group: EventLoopGroup, configuration: ProxyConfiguration,
                logger: Logger = Logger(label: "switchyard.proxy", factory: { _ in SwiftLogNoOpLogHandler() }),
                metricsFactory: MetricsFactory = MetricsSystem.factory) {
        self.group = group
        self.configuration = configuration
        self.logger = logger
        counters = ProxyCounters(metrics: ProxyMetrics(proxy: logger.label, factory: metricsFactory))
    }

    /// Binds every route's port and starts serving; returns the bound addresses in the order of the routes. Not on
    /// one of the group's loops.
    @discardableResult
    public func start() throws -> [SocketAddress] {
        try configuration.validate()
        if state.withLock({ s in defer { s.started = true }; return s.started }) { throw ProxyError.alreadyStarted }
        var loops: [ProxyLoop] = []
        do {
            for loop in group.ioLoops {
                let made = Mutex<Result<ProxyLoop, any Error>?>(nil)
                let done = DispatchSemaphore(value: 0)
                let configuration = self.configuration
                loop.executeInLoop {
                    made.withLock {
                        $0 = Result {
                            ProxyLoop(loop: loop, agent: try LoopLoadBalanceClient(
                                loop: loop, agentHost: configuration.agentHost, agentPorts: configuration.agentPorts,
                                timeout: configuration.agentTimeout, reportSecret: configuration.reportSecret))
                        }
                    }
                    done.signal()
                }
                done.wait()
                loops.append(try made.withLock { $0! }.get())
            }
        } catch {
            closeAgents(loops)
            throw error
        }
        state.withLock { $0.loops = loops }
        var listeners: [TCPListener] = []
        var addresses: [SocketAddress] = []
        do {
            for route in configuration.routes {
                // TCP_NODELAY on the listener: clients' bytes go on as they come (as to the backend, TCPDialer), no
                // Nagle delay on a small reply, and no setsockopt per connection (accepted sockets inherit it).
                let listener = TCPListener(group: group, host: configuration.host, port: route.port, noDelay: true,
                                           logger: logger) {
                    [weak self] socket in
                    guard let self else { return Posix.close(socket.fd) }
                    accepted(socket, route: route)
                }
                addresses.append(try listener.start())
                listeners.append(listener)
            }
        } catch {
            for listener in listeners { listener.stop() }
            closeAgents(loops)
            throw error
        }
        state.withLock {
            $0.listeners = listeners
            $0.addresses = addresses
        }
        warmUp(loops)
        logger.info("proxy serving", metadata: [
            "routes": "\(zip(configuration.routes, addresses).map { "\($1.port)->\($0.modid)/\($0.cmdid)" })",
            "transfer": "\(configuration.transfer)", "agent.ports": "\(configuration.agentPorts)",
        ])
        return addresses
    }

    /// The bound addresses, in the order of the routes (empty before ``start()``).
    public var addresses: [SocketAddress] { state.withLock { $0.addresses } }

    /// Starts (unless ``start()`` did) and serves until graceful shutdown; then ``shutdown()``.
    public func run() async throws {
        if state.withLock({ $0.started }) == false {
            _ = try await runOnDedicatedThread(name: "sy-proxy-bind") { [self] in Result { try start() } }.get()
        }
        try? await gracefulShutdown()
        await runOnDedicatedThread(name: "sy-proxy-stop") { [self] in shutdown() }
    }

    /// Stops accepting, lets open connections finish for up to `drainTimeout`, closes the rest, and closes the
    /// agent clients. Blocks; not on a loop thread. Idempotent.
    public func shutdown() {
        let (listeners, loops) = state.withLock { s -> ([TCPListener], [ProxyLoop]) in
            if s.stopped || !s.started { return ([], []) }
            s.stopped = true
            return (s.listeners, s.loops)
        }
        guard !loops.isEmpty else { return }
        for listener in listeners { listener.stop() }
        let open = counters.active
        if open > 0 {
            logger.info("draining connections", metadata: [
                "count": "\(open)", "drain.timeout": "\(configuration.drainTimeout)",
            ])
            let sem = DispatchSemaphore(value: 0)
            drained.withLock { $0 = sem }
            if counters.active > 0 {
                let deadline = DispatchTime.now() + .nanoseconds(Int(clamping: configuration.drainTimeout
                    .nanosecondsSaturated))
                if sem.wait(timeout: deadline) == .timedOut && counters.active > 0 {
                    logger.info("drain timeout: closing open connections",
                                metadata: ["count": "\(counters.active)"])
                    let closedAll = DispatchSemaphore(value: 0)
                    for proxyLoop in loops {
                        let bound = LoopBound(proxyLoop, loop: proxyLoop.loop)
                        proxyLoop.loop.execute {
                            bound.value.closeAll()
                            closedAll.signal()
                        }
                    }
                    for _ in loops { _ = closedAll.wait(timeout: .now() + .seconds(5)) }
                }
            }
            drained.withLock { $0 = nil }
        }
        closeAgents(loops)
        logger.info("proxy stopped", metadata: ["connections.served": "\(counters.snapshot().accepted)"])
    }

    /// A snapshot of the counters.
    public var statistics: ProxyStatistics {
        var snapshot = counters.snapshot()
        for proxyLoop in state.withLock({ $0.loops }) {
            let reports = proxyLoop.agent.reportStatistics
            snapshot.reportBatches += reports.batches
            snapshot.reportsDropped += reports.dropped
        }
        return snapshot
    }

    // MARK: Connections (on their loop)

    private func accepted(_ socket: AcceptedSocket, route: ProxyRoute) {
        guard let proxyLoop = loop(for: socket.loop) else { return Posix.close(socket.fd) }
        if counters.active >= configuration.maxConnections {
            counters.refused()
            Posix.close(socket.fd)
            noteRefusal("connection limit reached; closing new connections", peer: socket.peer,
                        metadata: ["limit": "\(configuration.maxConnections)"])
            return
        }
        counters.opened()
        let key: [UInt8]? = configuration.affinity == .clientIP ? Array(socket.peer.address.utf8) : nil
        let connection = ProxyConnection(id: nextID.wrappingAdd(1, ordering: .relaxed).oldValue, socket: socket,
                                         route: route, session: ProxySession(key: key,
                                                                             attempts: configuration.connectAttempts))
        proxyLoop.connections[connection.id] = connection
        perform(connection.session.handle(.accepted), for: connection, on: proxyLoop)
    }

    private func perform(_ actions: [ProxySession.Action], for connection: ProxyConnection, on proxyLoop: ProxyLoop) {
        for action in actions {
            switch action {
            case .askAgent(let key):
                if key == nil && configuration.spareHosts > 0 {
                    let now = SystemInfo.monotonicNanoseconds()
                    let spare = proxyLoop.takeSpare(for: connection.route, now: now, limit: configuration.spareHosts,
                                                    maxAge: configuration.spareHostMaxAge)
                    // The next spare is asked for after this iteration's events (the connect goes first).
                    refillSparesLater(on: proxyLoop)
                    if let spare {
                        counters.usedSpare()
                        perform(connection.session.handle(.agentAnswered(.host(spare))), for: connection,
                                on: proxyLoop)
                        continue
                    }
                }
                proxyLoop.agent.getHost(modid: connection.route.modid, cmdid: connection.route.cmdid, key: key) {
                    [self] result in
                    let event: ProxySession.Event
                    switch result {
                    case .success(let answer): event = .agentAnswered(answer)
                    case .failure(let error): event = .agentFailed("\(error)")
                    }
                    perform(connection.session.handle(event), for: connection, on: proxyLoop)
                }
            case .connect(let host):
                connection.dialer = TCPDialer.dial(on: proxyLoop.loop, to: host,
                                                   timeout: configuration.connectTimeout) { [self] result in
                    connection.dialer = nil
                    let event: ProxySession.Event
                    switch result {
                    case .success(let socket):
                        connection.backend = socket
                        event = .connected
                    case .failure(let error):
                        counters.noteConnectFailure(host)
                        logger.debug("backend connect failed", metadata: [
                            "backend": "\(host)", "error": "\(error)", "peer.address": "\(connection.socket.peer)",
                        ])
                        event = .connectFailed("\(error)")
                    }
                    perform(connection.session.handle(event), for: connection, on: proxyLoop)
                }
            case .startTunnel(let host):
                startTunnel(connection, host: host, on: proxyLoop)
            case .report(let host, let success):
                proxyLoop.agent.report(modid: connection.route.modid, cmdid: connection.route.cmdid, host: host,
                                       success: success)
                counters.reported(success: success)
            case .refuse(let refusal):
                counters.noBackend()
                Posix.close(connection.socket.fd)
                connection.clientClosed = true
                noteRefusal("no backend for new connections; closing them", peer: connection.socket.peer, metadata: [
                    "reason": "\(refusal)", "route": "\(connection.route)",
                ])
            case .finished:
                finished(connection, on: proxyLoop)
            }
        }
    }

    /// Asks for the missing spare hosts once this loop iteration's events are handled (once per iteration, whatever
    /// the number of connections that took a spare), in the agent client's end-of-iteration task: the requests leave
    /// with the iteration's reports in one system call, after the iteration's accepts and connects.
    private func refillSparesLater(on proxyLoop: ProxyLoop) {
        guard !proxyLoop.refillPosted else { return }
        proxyLoop.refillPosted = true
        proxyLoop.agent.atEndOfIteration { [weak self, weak proxyLoop] in
            guard let proxyLoop else { return }
            proxyLoop.refillPosted = false
            guard let self else { return }
            for key in proxyLoop.spares.keys { askForSpares(key, on: proxyLoop) }
        }
    }

    /// Asks the agent for the module's spare hosts that are missing (``SpareHosts``): several in one batch GetHost
    /// (one datagram, one pick each, one answer), which leaves with the loop iteration's reports. An agent that does
    /// not answer batches (Lars's) gets single requests from then on.
    private func askForSpares(_ key: ModuleKey, on proxyLoop: ProxyLoop) {
        guard var spares = proxyLoop.spares[key] else { return }
        let count = spares.toAsk(now: SystemInfo.monotonicNanoseconds())
        proxyLoop.spares[key] = spares
        guard count > 0 else { return }
        let answered: (Host?) -> Void = { [weak proxyLoop] host in
            proxyLoop?.spares[key]?.answered(host, now: SystemInfo.monotonicNanoseconds())
        }
        if count > 1 && proxyLoop.agentAnswersBatches {
            let queries = Array(repeating: HostQuery(modid: key.modid, cmdid: key.cmdid), count: count)
            proxyLoop.agent.getHosts(queries, batched: true) { [weak proxyLoop] result in
                switch result {
                case .success(let answers):
                    proxyLoop?.agentAnsweredBatch = true
                    for answer in answers { answered(answer.host) }
                case .failure(let error):
                    for _ in 0..<count { answered(nil) }
                    if case .closed = error { return }
                    // A refusal, or no answer from an agent that never answered one (Lars's has no ids 104/105):
                    // single requests from now on. (An agent that answered batches before is away, not unable.)
                    guard let proxyLoop else { return }
                    if case .batchRefused = error { proxyLoop.agentAnswersBatches = false }
                    if !proxyLoop.agentAnsweredBatch { proxyLoop.agentAnswersBatches = false }
                }
            }
            return
        }
        for _ in 0..<count {
            // With this iteration's reports, in one system call.
            proxyLoop.agent.getHost(modid: key.modid, cmdid: key.cmdid, key: nil, batched: true) { result in
                if case .success(.host(let host)) = result { answered(host) } else { answered(nil) }
            }
        }
    }

    private func startTunnel(_ connection: ProxyConnection, host: Host, on proxyLoop: ProxyLoop) {
        let preamble = configuration.sendProxy.map { version in
            ProxyHeader.encode(version, client: connection.socket.peer,
                               proxy: connection.socket.local)
        } ?? []
        let onEnd: (TCPTunnel, TunnelOutcome) -> Void = { [self] _, outcome in
            connection.tunnel = nil
            counters.noteTunnelEnd(outcome)
            if outcome.end == .idleTimeout { noteIdleClose(connection) }
            perform(connection.session.handle(.tunnelEnded(outcome)), for: connection, on: proxyLoop)
        }
        let backend = connection.backend
        connection.backend = nil
        guard let backend else {
            // No connected socket to join (not reached: the connect's success sets it just before): the client
            // closes, nothing is reported.
            let outcome = TunnelOutcome(end: .closed, clientToServerBytes: 0, serverToClientBytes: 0)
            return perform(connection.session.handle(.tunnelEnded(outcome)), for: connection, on: proxyLoop)
        }
        let tunnel = TCPTunnel(
            loop: proxyLoop.loop, client: connection.socket, server: backend,
            options: TunnelOptions(transfer: configuration.transfer, bufferBytes: configuration.bufferBytes,
                                   idleTimeout: configuration.idleTimeout),
            preamble: preamble, onEnd: onEnd)
        connection.tunnel = tunnel
        connection.clientClosed = true  // the tunnel owns the descriptors now
        do {
            try tunnel.start()
        } catch {
            // Both descriptors are closed; the backend did nothing wrong.
            connection.tunnel = nil
            logger.debug("cannot serve the connection", metadata: ["error": "\(error)"])
            perform(connection.session.handle(.tunnelEnded(TunnelOutcome(end: .closed, clientToServerBytes: 0,
                                                                          serverToClientBytes: 0))),
                    for: connection, on: proxyLoop)
        }
    }

    private func finished(_ connection: ProxyConnection, on proxyLoop: ProxyLoop) {
        guard proxyLoop.connections.removeValue(forKey: connection.id) != nil else { return }
        connection.releaseDescriptors()
        if counters.closed() {
            _ = drained.withLock { $0?.signal() }
        }
    }

    private func loop(for loop: EventLoop) -> ProxyLoop? {
        state.withLock { s in s.loops.first { $0.loop === loop } }
    }

    /// Names each route's module to the agent at start (`prefetch`): an agent learns a module on its first request
    /// (and answers GetHost "no such module" while it fetches the route), so the first client does not pay for that.
    private func warmUp(_ loops: [ProxyLoop]) {
        guard let first = loops.first else { return }
        let routes = configuration.routes
        let bound = LoopBound(first, loop: first.loop)
        first.loop.execute {
            for route in routes { bound.value.agent.prefetch(modid: route.modid, cmdid: route.cmdid) }
        }
    }

    private func closeAgents(_ loops: [ProxyLoop]) {
        for proxyLoop in loops {
            let bound = LoopBound(proxyLoop, loop: proxyLoop.loop)
            proxyLoop.loop.execute { bound.value.agent.close() }
        }
    }

    /// Connections closed by the idle timeout: one log line when an episode starts, one with the count when it ends.
    private func noteIdleClose(_ connection: ProxyConnection) {
        let step = idleCloses.withLock { $0.record(now: SystemInfo.monotonicNanoseconds()) }
        guard case .started(let ended) = step else { return }
        if ended > 0 { logger.info("closed idle connections", metadata: ["count": "\(ended)"]) }
        logger.info("closing connections silent for longer than the idle timeout (logged once per episode)",
                    metadata: ["peer.address": "\(connection.socket.peer)", "route": "\(connection.route)",
                               "idle.timeout": "\(configuration.idleTimeout.map { "\($0)" } ?? "none")"])
    }

    /// One log line when an episode of refusals starts (the first peer and reason), one with the count when it ends.
    private func noteRefusal(_ message: Logger.Message, peer: SocketAddress, metadata: Logger.Metadata) {
        let step = refusals.withLock { $0.record(now: SystemInfo.monotonicNanoseconds()) }
        guard case .started(let ended) = step else { return }
        if ended > 0 { logger.info("refused connections", metadata: ["refused.count": "\(ended)"]) }
        var all = metadata
        all["peer.address"] = "\(peer)"
        logger.info("\(message) (logged once per episode)", metadata: all)
    }
}
