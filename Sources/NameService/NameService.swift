import LarsProtocol
import LoadBalancing
import Logging
import Messaging
import Reactor
import RouteStore
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
/// Lookups read the current snapshot under a lock held only to copy a reference; a connection's subscriptions
/// are kept on its loop, so a repeated request takes no other lock. The database is read by a task through the
/// pool's async API, never on a reactor loop. When the database is unreachable the last snapshot is served and
/// the outage is logged once (and its end once).
///
/// Servers may also register themselves for a route with a time to live (message id 102, answered with 103; see
/// ``ServiceRegistration``): a registered host is served next to the hosts of RouteData until its registration
/// runs out or is taken back, and its arrival and departure are pushed like a database change.
///
/// Safe to call from any thread.
public final class NameService: Sendable {
    /// The settings.
    public let configuration: NameServiceConfiguration
    private let core: Core
    private let server: FramedServer
    private let poller = Mutex<[Task<Void, Never>]>([])

    /// Creates the service; nothing is bound or read until ``start()``.
    ///
    /// - Parameters:
    ///   - group: The loops that serve the agent connections.
    ///   - configuration: Address, port and reload intervals.
    ///   - pool: The database with the Lars tables (created when missing).
    ///   - logger: Where the service logs start, stop, reloads and database outages (info and below).
    public init(group: EventLoopGroup, configuration: NameServiceConfiguration, pool: ConnectionPool, logger: Logger) {
        self.configuration = configuration
        let core = Core(pool: pool, configuration: configuration, logger: logger)
        self.core = core
        let router = MessageRouter<TCPConnection>()
        // Cannot throw: a fresh router with one route.
        try! router.on(MessageID.getRouteRequest, as: Lars_GetRouteRequest.self) { request, message in
            core.handleGetRoute(request, on: message.connection)
        }
        try! router.on(MessageID.registerHostRequest, as: Switchyard_Lb_RegisterHostRequest.self) { request, message in
            core.handleRegister(request, on: message.connection)
        }
        server = FramedServer(
            group: group,
            configuration: FramedServerConfiguration(server: ServerConfiguration(
                host: configuration.host, port: configuration.port, maxConnections: configuration.maxConnections,
                logger: logger)),
            router: router,
            onClose: { connection in core.connectionClosed(connection) })
    }

    /// Binds, starts answering from the (initially empty) snapshot and starts polling the database; the first load
    /// runs at once and its routes are pushed to whoever asked before it. Returns the bound address.
    @discardableResult
    public func start() throws -> SocketAddress {
        let address = try server.start()
        let core = self.core
        poller.withLock { tasks in
            if tasks.isEmpty {
                tasks = [Task { await core.runPolling() }, Task { await core.runExpiry() }]
            }
        }
        core.logger.info("name service listening", metadata: ["address": "\(address)"])
        return address
    }

    /// Stops polling, stops accepting and closes the connections. Blocks (bounded); not on a loop thread.
    public func shutdown() {
        poller.withLock { tasks in
            for task in tasks { task.cancel() }
            tasks = []
        }
        server.shutdown()
        core.logger.info("name service stopped")
    }

    /// The bound address once started.
    public var localAddress: SocketAddress? { server.localAddress }

    /// The routes currently served.
    public var snapshot: RouteSnapshot { core.snapshot.withLock { $0 } }

    /// The counters.
    public var statistics: NameServiceStatistics { core.statistics }

    /// Reloads the routes now (as a poll that found a new version would) and pushes the changed ones. Throws the
    /// database error; the snapshot is kept then.
    public func reload() async throws { try await core.reload(since: nil) }

    /// The state shared by the loops (handlers) and the polling task.
    final class Core: Sendable {
        let pool: ConnectionPool
        let configuration: NameServiceConfiguration
        let logger: Logger
        let snapshot = Mutex<RouteSnapshot>(.empty)
        /// Who asked for which route: route -> connection id -> connection.
        let subscriptions = Mutex<[RouteKey: [UInt64: TCPConnection]]>([:])
        let requests = Atomic<Int>(0)
        let pushes = Atomic<Int>(0)
        let reloads = Atomic<Int>(0)
        let failedPolls = Atomic<Int>(0)
        let reachable = Atomic<Bool>(true)
        /// Self-registered hosts: route -> host -> expiry (monotonic nanoseconds).
        let registrations = Mutex<[RouteKey: [Host: UInt64]]>([:])
        /// RouteData as last loaded; the served snapshot is this plus the registrations.
        let database = Mutex<(version: Int64, entries: [RouteEntry])>((-1, []))
        /// Serializes building and swapping the served snapshot (reloads, registrations, expiries).
        let rebuilding = Mutex<Void>(())
        /// A rebuild for registration changes is scheduled and has not started yet.
        let rebuildScheduled = Atomic<Bool>(false)

        init(pool: ConnectionPool, configuration: NameServiceConfiguration, logger: Logger) {
            self.pool = pool
            self.configuration = configuration
            self.logger = logger
        }

        var statistics: NameServiceStatistics {
            NameServiceStatistics(
                requests: requests.load(ordering: .relaxed), pushes: pushes.load(ordering: .relaxed),
                reloads: reloads.load(ordering: .relaxed), failedPolls: failedPolls.load(ordering: .relaxed),
                version: snapshot.withLock { $0.version },
                subscriptions: subscriptions.withLock { $0.values.reduce(0) { $0 + $1.count } },
                databaseReachable: reachable.load(ordering: .relaxed))
        }

        /// The routes one connection asked for. Loop thread only (kept in `connection.context`).
        final class Subscriber {
            var keys: Set<RouteKey> = []
            var warnedFull = false
        }

        /// Answers a GetRouteRequest. Loop thread only. Subscribes before reading the snapshot, so a reload that
        /// swaps the snapshot after the read pushes the new routes to this connection too.
        func handleGetRoute(_ request: Lars_GetRouteRequest, on connection: TCPConnection) {
            requests.wrappingAdd(1, ordering: .relaxed)
            let key = RouteKey(modid: request.modid, cmdid: request.cmdid)
            let subscriber: Subscriber
            if let existing = connection.context as? Subscriber {
                subscriber = existing
            } else {
                subscriber = Subscriber()
                connection.context = subscriber
            }
            if !subscriber.keys.contains(key) {
                if subscriber.keys.count < configuration.maxSubscriptionsPerConnection {
                    subscriber.keys.insert(key)
                    subscriptions.withLock { $0[key, default: [:]][connection.id] = connection }
                } else if !subscriber.warnedFull {
                    subscriber.warnedFull = true
                    logger.warning("subscription limit of a connection reached; further routes are answered, not pushed",
                                   metadata: ["peer": "\(connection.peerAddress)",
                                              "limit": "\(configuration.maxSubscriptionsPerConnection)"])
                }
            }
            let current = snapshot.withLock { $0 }
            current.responseBody(for: key).withUnsafeBytes {
                _ = connection.sendFrame(messageID: MessageID.getRouteResponse.rawValue, body: $0)
            }
        }

        /// Drops a closed connection's subscriptions. Loop thread only.
        func connectionClosed(_ connection: TCPConnection) {
            guard let subscriber = connection.context as? Subscriber, !subscriber.keys.isEmpty else { return }
            subscriptions.withLock { subs in
                for key in subscriber.keys {
                    subs[key]?[connection.id] = nil
                    if subs[key]?.isEmpty == true { subs[key] = nil }
                }
            }
            subscriber.keys.removeAll()
        }

        /// Polls RouteVersion until cancelled; see ``NameService``.
        func runPolling() async {
            var schemaReady = false
            var lastVersion: Int64?
            var lastFullReload = ContinuousClock.now
            var outageStart: ContinuousClock.Instant?
            while !Task.isCancelled {
                do {
                    if !schemaReady {
                        try await RouteSchema.create(on: pool)
                        schemaReady = true
                    }
                    let version = try await RouteAdmin.currentVersion(on: pool)
                    let now = ContinuousClock.now
                    let full = now - lastFullReload >= configuration.fullReloadInterval
                    if version != lastVersion || full {
                        try await reload(since: lastVersion.flatMap { $0 == version ? nil : $0 }, version: version)
                        lastVersion = version
                        lastFullReload = now
                    }
                    if let start = outageStart {
                        outageStart = nil
                        reachable.store(true, ordering: .relaxed)
                        logger.info("name service: database reachable again, routes reloaded", metadata: [
                            "outage.seconds": "\((ContinuousClock.now - start).components.seconds)",
                            "route.version": "\(version)",
                        ])
                    }
                } catch {
                    if Task.isCancelled { break }
                    failedPolls.wrappingAdd(1, ordering: .relaxed)
                    if outageStart == nil {
                        outageStart = .now
                        reachable.store(false, ordering: .relaxed)
                        logger.info("name service: database unreachable, serving the last routes", metadata: [
                            "error": "\(error)", "route.version": "\(snapshot.withLock { $0.version })",
                        ])
                    }
                }
                try? await Task.sleep(for: configuration.pollInterval)
            }
        }

        /// Loads RouteData, swaps the snapshot and pushes every route that changed: those named by RouteChange rows
        /// after `since` (when given) and those whose hosts differ from the previous snapshot.
        func reload(since lastVersion: Int64?, version given: Int64? = nil) async throws {
            let version: Int64
            if let given { version = given } else { version = try await RouteAdmin.currentVersion(on: pool) }
            var changed: Set<RouteKey> = []
            if let lastVersion {
                let rows = try await pool.query(
                    "SELECT DISTINCT modid, cmdid FROM RouteChange WHERE version > ? AND version <= ?",
                    [.integer(lastVersion), .integer(version)]).rows
                for row in rows {
                    if let modid = try? row.decode(0, as: Int32.self), let cmdid = try? row.decode(1, as: Int32.self) {
                        changed.insert(RouteKey(modid: modid, cmdid: cmdid))
                    }
                }
            }
            let entries = try await RouteAdmin.listRoutes(on: pool)
            database.withLock { $0 = (version, entries) }
            reloads.wrappingAdd(1, ordering: .relaxed)
            rebuild(alsoPushing: changed)
        }

        /// Builds the served snapshot from the last database load and the live registrations, swaps it in and
        /// pushes the routes that changed (and `extra`). Any thread.
        func rebuild(alsoPushing extra: Set<RouteKey> = []) {
            rebuilding.withLock { _ in
                let (version, entries) = database.withLock { $0 }
                let registered = registrations.withLock { regs in
                    regs.flatMap { key, hosts in hosts.keys.map { RouteEntry(key: key, host: $0) } }
                }
                let fresh = RouteSnapshot(version: version, entries: entries + registered,
                                          reusing: snapshot.withLock { $0 })
                let old = snapshot.withLock { current in
                    defer { current = fresh }
                    return current
                }
                push(extra.union(fresh.changedRoutes(since: old)), from: fresh)
            }
        }

        /// Rebuilds soon, off the loops; registration changes arriving before it starts share it (a crowd of
        /// servers registering after a restart costs a few rebuilds, not one each). Any thread.
        func scheduleRebuild() {
            if rebuildScheduled.exchange(true, ordering: .acquiringAndReleasing) { return }
            Task.detached { [self] in
                // Cleared before reading the registrations: a change after this point schedules another rebuild.
                rebuildScheduled.store(false, ordering: .releasing)
                rebuild()
            }
        }

        /// A server registering itself (or taking its registration back, ttl 0). Loop thread only.
        func handleRegister(_ request: Switchyard_Lb_RegisterHostRequest, on connection: TCPConnection) {
            let key = RouteKey(modid: request.modid, cmdid: request.cmdid)
            var reply = Switchyard_Lb_RegisterHostResponse()
            reply.modid = request.modid
            reply.cmdid = request.cmdid
            let maxTTL = configuration.maxRegistrationTTL
            let ttlNs = UInt64(request.ttlMs) * 1_000_000
            guard let host = Host(wireIP: request.ip, wirePort: request.port), host.ip != 0, host.port != 0 else {
                reply.reason = "bad host: ip \(UInt32(bitPattern: request.ip)), port \(request.port)"
                return refuse(reply, on: connection)
            }
            guard Duration.milliseconds(Int64(request.ttlMs)) <= maxTTL else {
                reply.reason = "ttl \(request.ttlMs) ms is above the limit of \(maxTTL)"
                return refuse(reply, on: connection)
            }
            let now = SystemInfo.monotonicNanoseconds()
            let limit = configuration.maxRegistrations
            enum Outcome { case added, removed, refreshed, full }
            let outcome = registrations.withLock { regs -> Outcome in
                if ttlNs == 0 {
                    guard regs[key]?.removeValue(forKey: host) != nil else { return .refreshed }
                    if regs[key]?.isEmpty == true { regs[key] = nil }
                    return .removed
                }
                if regs[key]?[host] != nil {
                    regs[key]![host] = now &+ ttlNs
                    return .refreshed
                }
                if regs.values.reduce(0, { $0 + $1.count }) >= limit { return .full }
                regs[key, default: [:]][host] = now &+ ttlNs
                return .added
            }
            if outcome == .full {
                reply.reason = "the name service holds its limit of \(limit) registrations"
                return refuse(reply, on: connection)
            }
            if outcome == .added || outcome == .removed {
                logger.info(outcome == .added ? "host registered" : "host deregistered",
                            metadata: ["route": "\(key)", "host": "\(host)", "ttl_ms": "\(request.ttlMs)"])
                scheduleRebuild()
            }
            reply.ok = true
            connection.send(reply, id: MessageID.registerHostResponse)
        }

        private func refuse(_ reply: Switchyard_Lb_RegisterHostResponse, on connection: TCPConnection) {
            logger.info("registration refused", metadata: [
                "peer": "\(connection.peerAddress)", "reason": "\(reply.reason)"])
            connection.send(reply, id: MessageID.registerHostResponse)
        }

        /// Drops registrations whose time ran out, every 100 ms, until cancelled.
        func runExpiry() async {
            while !Task.isCancelled {
                try? await Task.sleep(for: .milliseconds(100))
                let now = SystemInfo.monotonicNanoseconds()
                let expired = registrations.withLock { regs -> [RouteEntry] in
                    var gone: [RouteEntry] = []
                    for (key, hosts) in regs {
                        for (host, expiry) in hosts where expiry <= now {
                            gone.append(RouteEntry(key: key, host: host))
                            regs[key]![host] = nil
                        }
                        if regs[key]?.isEmpty == true { regs[key] = nil }
                    }
                    return gone
                }
                if expired.isEmpty { continue }
                for entry in expired {
                    logger.info("host registration ran out", metadata: ["route": "\(entry.key)", "host": "\(entry.host)"])
                }
                rebuild()
            }
        }

        /// Sends the routes in `keys` to their subscribers. Any thread.
        ///
        /// Each push is handed to the subscriber's loop and encodes nothing itself: it sends the route as the
        /// snapshot has it when the loop gets to it. Rebuilds on different threads may hand their pushes over in any
        /// order, so a body taken from an older snapshot could otherwise arrive after a newer one and leave the
        /// agent with a stale route.
        func push(_ keys: Set<RouteKey>, from fresh: RouteSnapshot) {
            guard !keys.isEmpty else { return }
            let targets = subscriptions.withLock { subs -> [(RouteKey, [TCPConnection])] in
                keys.compactMap { key in subs[key].map { (key, Array($0.values)) } }
            }
            for (key, connections) in targets {
                for connection in connections {
                    connection.loop.execute { [self] in
                        let body = snapshot.withLock { $0 }.responseBody(for: key)
                        body.withUnsafeBytes {
                            _ = connection.sendFrame(messageID: MessageID.getRouteResponse.rawValue, body: $0)
                        }
                    }
                    pushes.wrappingAdd(1, ordering: .relaxed)
                }
            }
        }
    }
}
