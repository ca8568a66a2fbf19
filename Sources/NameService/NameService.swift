import LarsProtocol
import LoadBalancing
import Logging
import Messaging
import Reactor
import RouteStore
import ServiceLifecycle
import Storage
import Synchronization

/// The name service: answers "which hosts serve (modid, cmdid)?" (GetRouteRequest, id 1 -> GetRouteResponse, id 2)
/// from an in-memory snapshot of RouteData, and pushes a fresh GetRouteResponse to every connection that asked
/// for a route when that route changes.
///
///     database --(poll RouteVersion every pollInterval; reload on change, and every fullReloadInterval)--+
///                                                                                                        v
///     agent --GetRouteRequest--> loop: subscribe the connection, reply from the snapshot <-- RouteSnapshot (swapped
///     agent <--GetRouteResponse-- push to the subscribers of changed routes <------------------  atomically)
///
/// The rules live in ``NameServiceCore`` (a value: subscriptions, registrations, the snapshot); this class is its
/// shell: the framed server, the database pool, the clock and the loops. Handlers on any I/O loop decide under one
/// lock and perform the core's actions after unlocking; snapshots are built outside the lock, one build at a time,
/// so a lookup never waits for a rebuild. The database is read through the pool's async API, never on a reactor
/// loop. When it is unreachable the last snapshot is served and the outage is logged once (and its end once).
///
/// Servers may also register themselves for a route with a time to live (message id 102, answered with 103; see
/// `ServiceRegistration`): a registered host is served next to the hosts of RouteData until its registration
/// runs out or is taken back, and its arrival and departure are pushed like a database change.
///
/// A `Service`: ``run()`` binds (unless ``start()`` did), polls the database, expires registrations and rebuilds the
/// snapshot in child tasks, and on graceful shutdown (or cancellation) stops accepting and closes the connections.
/// The tables must exist (`RouteSchema.create`). Safe to call from any thread.
public final class NameService: Service, Sendable {
    /// The settings.
    public let configuration: NameServiceConfiguration
    private let engine: Engine
    private let relay: StateRelay
    private let server: FramedServer
    private let running = Atomic<Bool>(false)

    /// Creates the service; nothing is bound or read until ``start()`` or ``run()``.
    ///
    /// - Parameters:
    ///   - group: The loops that serve the agent connections.
    ///   - configuration: Address, port, reload intervals and limits (see
    ///     ``NameServiceConfiguration/validate()``; ``run()`` throws when it is out of range).
    ///   - pool: The database with the Lars tables.
    ///   - logger: Where the service logs start, stop, reloads, registrations and database outages (info and below).
    public convenience init(group: EventLoopGroup, configuration: NameServiceConfiguration, pool: ConnectionPool,
                            logger: Logger) {
        self.init(group: group, configuration: configuration, pool: pool, logger: logger,
                  logQuietInterval: .seconds(10))
    }

    /// `logQuietInterval`: an episode of connections at their subscription limit (and of the framed server's
    /// refusals) ends after this long without one; the next starts a new log line. Tests shorten it.
    init(group: EventLoopGroup, configuration: NameServiceConfiguration, pool: ConnectionPool, logger: Logger,
         logQuietInterval: Duration) {
        self.configuration = configuration
        let engine = Engine(pool: pool, configuration: configuration, logger: logger,
                            logQuietInterval: logQuietInterval)
        self.engine = engine
        var relayLimits = StateRelay.Limits()
        relayLimits.retention = configuration.stateRetention
        relayLimits.maxPayload = configuration.stateMaxPayload
        relayLimits.maxPendingBytes = configuration.stateMaxPendingBytes
        relayLimits.maxQueuedBytes = configuration.stateMaxSubscriberQueue
        let relay = StateRelay(pool: pool, limits: relayLimits, logger: logger)
        self.relay = relay
        let router = MessageRouter<TCPConnection>()
        try! router.on(MessageID.publishState, as: Switchyard_Names_PublishState.self) { request, message in
            relay.publish(request, on: message.connection)
        }
        try! router.on(MessageID.subscribeState, as: Switchyard_Names_SubscribeState.self) { request, message in
            relay.subscribe(request, on: message.connection)
        }
        // Cannot throw: a fresh router with two routes.
        try! router.on(MessageID.getRouteRequest, as: Lars_GetRouteRequest.self) { request, message in
            engine.getRoute(RouteKey(modid: request.modid, cmdid: request.cmdid), on: message.connection)
        }
        try! router.on(MessageID.chainGetRouteRequest, as: Switchyard_Names_ChainGetRouteRequest.self) { request, m in
            engine.getRoute(RouteKey(modid: request.modid, cmdid: request.cmdid), hops: request.hops,
                            on: m.connection)
        }
        try! router.on(MessageID.registerHostRequest, as: Switchyard_Lb_RegisterHostRequest.self) { request, message in
            engine.register(request, on: message.connection)
        }
        if let parent = configuration.parent {
            let parentRouter = MessageRouter<TCPConnection>()
            try! parentRouter.on(MessageID.getRouteResponse, as: Lars_GetRouteResponse.self) { response, _ in
                engine.parentAnswered(response)
            }
            var client = ClientConfiguration(host: parent.host, port: parent.port, connectTimeout: .seconds(2))
            client.alternates = configuration.parentAlternates
            // A bad address fails here only if it is not an IPv4 literal or a name: `validate()` says so first.
            let upstream = try? FramedClient(
                loop: group.next(),
                configuration: FramedClientConfiguration(client: client, heartbeatInterval: .seconds(1),
                                                         silenceTimeout: .seconds(3)),
                router: parentRouter, logger: logger,
                onConnect: { _ in engine.parentConnected() })
            engine.parent.withLock { $0 = upstream }
        }
        server = FramedServer(
            group: group,
            configuration: FramedServerConfiguration(
                server: ServerConfiguration(host: configuration.host, port: configuration.port,
                                            maxConnections: configuration.maxConnections),
                logQuietInterval: logQuietInterval),
            router: router, logger: logger,
            onClose: { connection in
                engine.connectionClosed(connection)
                relay.connectionClosed(connection)
            })
    }

    /// Binds and starts answering from the (still empty) snapshot; returns the bound address. Lets a caller learn
    /// the address (port 0), or that the port is taken, before ``run()``, which loads the routes and pushes them to
    /// whoever asked meanwhile. Idempotent: a second call returns the address. Throws
    /// ``NameServiceError/invalidConfiguration(_:)`` or the bind error. Blocks briefly (until the acceptor loop
    /// listens); not on a loop thread.
    @discardableResult
    public func start() throws -> SocketAddress {
        if let address = server.localAddress { return address }
        try configuration.validate()
        let address = try server.start()
        engine.logger.info("name service listening", metadata: ["local.address": "\(address)"])
        return address
    }

    /// Runs the service until graceful shutdown or cancellation (see ``NameService``): binds unless ``start()``
    /// did, then stops accepting and closes the connections before it returns. Throws the error of ``start()``, or
    /// ``NameServiceError/alreadyRunning``.
    public func run() async throws {
        if running.exchange(true, ordering: .acquiringAndReleasing) { throw NameServiceError.alreadyRunning }
        if server.localAddress == nil {
            _ = try await runOnDedicatedThread(name: "sy-names-bind") { [self] in Result { try start() } }.get()
        }
        let engine = self.engine
        let parent = engine.parent.withLock { $0 }
        parent?.connect()
        await withTaskGroup(of: Void.self) { tasks in
            tasks.addTask { await engine.runPolling() }
            tasks.addTask { await engine.runExpiry() }
            tasks.addTask { await engine.runRebuilds() }
            tasks.addTask { await engine.runRegistrationSync() }
            tasks.addTask { [relay, configuration] in
                await relay.run(pollInterval: configuration.pollInterval,
                                pruneInterval: configuration.fullReloadInterval)
            }
            try? await gracefulShutdown()
            tasks.cancelAll()
        }
        parent?.disconnect()
        await stopServer()
        engine.logger.info("name service stopped")
    }

    /// Stops accepting and closes the connections, waiting on a thread of its own.
    private func stopServer() async {
        await runOnDedicatedThread(name: "sy-names-stop") { [server] in server.shutdown() }
    }

    /// The bound address once bound.
    public var localAddress: SocketAddress? { server.localAddress }

    /// The routes currently served (the database's with the registered hosts merged in).
    public var snapshot: ServedRoutes { engine.snapshot }

    /// The counters.
    public var statistics: NameServiceStatistics {
        var statistics = engine.statistics
        let relay = relay.counters
        statistics.stateChangesPublished = relay.published
        statistics.stateChangesDelivered = relay.delivered
        statistics.stateChangesRefused = relay.refused
        statistics.stateSubscribersClosed = relay.slowClosed
        statistics.stateRelayReady = relay.ready
        return statistics
    }

    /// Reloads the routes now (as a poll that found a new version would) and pushes the changed ones; the
    /// snapshot is swapped when this returns. Throws the database error; the snapshot is kept then.
    public func reload() async throws { try await engine.reload(since: nil) }
}

/// The errors of a ``NameService``.
public enum NameServiceError: Error, Sendable, Hashable, CustomStringConvertible {
    /// A setting is out of range; the text names it.
    case invalidConfiguration(String)
    /// ``NameService/run()`` was called while the service runs.
    case alreadyRunning

    public var description: String {
        switch self {
        case .invalidConfiguration(let text): return "invalid name service configuration: \(text)"
        case .alreadyRunning: return "the name service is running already"
        }
    }
}
