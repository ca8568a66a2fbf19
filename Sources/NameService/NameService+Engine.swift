import LarsProtocol
import LoadBalancing
import Logging
import Messaging
import Metrics
import Reactor
import RouteStore
import Storage
import SwitchyardCore
import Synchronization

extension NameService {
    /// The shell around ``NameServiceCore``: the lock, the connections, the sends, the rebuilds, the database
    /// polling and the expiry ticks. Handlers call it on their loop; the polling, expiry and rebuild loops run as
    /// child tasks of ``NameService/run()``.
    final class Engine: Sendable {
        struct Shared {
            var core: NameServiceCore
            /// The connections the core knows by id (those that sent a request), for performing its sends.
            var connections: [UInt64: TCPConnection] = [:]
            /// A snapshot is being built (by one caller; the others leave the core marked stale and wait).
            var rebuilding = false
            var rebuildWaiters: [CheckedContinuation<Void, Never>] = []
        }

        /// An action with its connection looked up (under the lock).
        enum Resolved {
            case send(TCPConnection, MessageID, [UInt8])
            case push(TCPConnection, RouteKey)
            case rebuild
            case askParent(RouteKey, UInt32)
            case log(NameServiceCore.Event, TCPConnection?)
        }

        let pool: ConnectionPool
        let configuration: NameServiceConfiguration
        let logger: Logger
        let state: Mutex<Shared>
        let failedPolls = Atomic<Int>(0)
        let routeChangesPruned = Atomic<Int>(0)
        let reachable = Atomic<Bool>(true)
        let metrics = Metrics()
        /// Connections reaching their subscription limit: one line per episode, not one per connection.
        let subscriptionLimitEpisode: Mutex<LogEpisode>
        /// Wakes the rebuild loop; a burst of registrations leaves one wake-up (newest kept).
        let rebuildSignal: AsyncStream<Void>
        let rebuildRequests: AsyncStream<Void>.Continuation

        /// swift-metrics instruments (no-ops until the executable bootstraps a backend).
        struct Metrics: Sendable {
            static let dimensions = [("service", "names")]
            let requests = Counter(label: "switchyard_names_requests_total", dimensions: dimensions)
            let pushes = Counter(label: "switchyard_names_pushes_total", dimensions: dimensions)
            let reloads = Counter(label: "switchyard_names_reloads_total", dimensions: dimensions)
            let failedPolls = Counter(label: "switchyard_names_failed_polls_total", dimensions: dimensions)
            let subscriptions = Gauge(label: "switchyard_names_subscriptions", dimensions: dimensions)
            let registrations = Gauge(label: "switchyard_names_registrations", dimensions: dimensions)
            let registrationsRefused = Counter(label: "switchyard_names_registrations_refused_total",
                                               dimensions: dimensions)
            let routesTruncated = Counter(label: "switchyard_names_routes_truncated_total", dimensions: dimensions)
        }

        init(pool: ConnectionPool, configuration: NameServiceConfiguration, logger: Logger,
             logQuietInterval: Duration) {
            self.pool = pool
            self.configuration = configuration
            self.logger = logger
            subscriptionLimitEpisode = Mutex(LogEpisode(quietInterval: logQuietInterval))
            var core = NameServiceCore(limits: NameServiceCore.Limits(configuration))
            core.tokensLoaded(configuration.moduleTokens)  // in force before the first database load
            state = Mutex(Shared(core: core))
            (rebuildSignal, rebuildRequests) = AsyncStream.makeStream(of: Void.self, bufferingPolicy: .bufferingNewest(1))
        }

        var snapshot: ServedRoutes { state.withLock { $0.core.snapshot } }

        var statistics: NameServiceStatistics {
            var statistics = state.withLock { s in
                NameServiceStatistics(
                    requests: s.core.requests, pushes: s.core.pushes, reloads: s.core.reloads, failedPolls: 0,
                    version: s.core.snapshot.version, subscriptions: s.core.subscriptionCount, databaseReachable: true,
                    registrations: s.core.registrationCount, registrationsRefused: s.core.registrationsRefused,
                    routesTruncated: s.core.routesTruncated)
            }
            statistics.failedPolls = failedPolls.load(ordering: .relaxed)
            statistics.routeChangesPruned = routeChangesPruned.load(ordering: .relaxed)
            statistics.databaseReachable = reachable.load(ordering: .relaxed)
            return statistics
        }

        // MARK: Handlers (loop threads)

        /// Answers a GetRouteRequest (id 1; or id 110 from a child name service, with its hop count). Loop thread
        /// of `connection`.
        func getRoute(_ key: RouteKey, hops: UInt32 = 0, on connection: TCPConnection) {
            metrics.requests.increment()
            let (actions, subscriptions) = state.withLock { s in
                s.connections[connection.id] = connection
                let before = s.core.subscriptionCount
                let actions = resolve(s.core.getRoute(key, from: connection.id, hops: hops), in: s)
                return (actions, s.core.subscriptionCount == before ? nil : s.core.subscriptionCount)
            }
            if let subscriptions { metrics.subscriptions.record(subscriptions) }
            perform(actions)
        }

        /// A server registering itself (or taking its registration back). Loop thread of `connection`.
        func register(_ request: Switchyard_Lb_RegisterHostRequest, on connection: TCPConnection) {
            let now = ContinuousClock.now
            let source = connection.peerAddress.ip
            let (actions, registrations, refused) = state.withLock { s in
                s.connections[connection.id] = connection
                let before = s.core.registrationsRefused
                let actions = resolve(s.core.register(request, from: connection.id, source: source, now: now), in: s)
                return (actions, s.core.registrationCount, s.core.registrationsRefused - before)
            }
            metrics.registrations.record(registrations)
            if refused > 0 { metrics.registrationsRefused.increment(by: refused) }
            perform(actions)
        }

        /// The parent's connection (a regional name service), set once when the service is made.
        let parent = Mutex<FramedClient?>(nil)

        /// The parent answered or pushed a route. Loop thread of the parent's connection.
        func parentAnswered(_ response: Lars_GetRouteResponse) {
            let key = RouteKey(modid: response.modid, cmdid: response.cmdid)
            var hosts: [Host] = []
            var loads: [Host: HostLoad] = [:]
            for info in response.host {
                guard let host = Host(info) else { continue }
                hosts.append(host)
                if info.hasLoad && info.hasCapacity { loads[host] = HostLoad(load: info.load, capacity: info.capacity) }
            }
            let actions = state.withLock { s in resolve(s.core.parentAnswered(key, hosts: hosts, loads: loads), in: s) }
            perform(actions)
        }

        /// Connected to the parent: asks again for every route asked of it.
        func parentConnected() {
            let actions = state.withLock { s in resolve(s.core.parentConnected(), in: s) }
            perform(actions)
        }

        /// Forgets a closed connection. Loop thread of `connection`.
        func connectionClosed(_ connection: TCPConnection) {
            let subscriptions = state.withLock { s -> Int? in
                guard s.connections.removeValue(forKey: connection.id) != nil else { return nil }
                s.core.connectionClosed(connection.id)
                return s.core.subscriptionCount
            }
            if let subscriptions { metrics.subscriptions.record(subscriptions) }
        }

        // MARK: Performing the core's actions

        /// Looks up the connections of `actions` (under the lock); actions for connections gone are dropped.
        private func resolve(_ actions: [NameServiceCore.Action], in s: Shared) -> [Resolved] {
            actions.compactMap { action in
                switch action {
                case .send(let id, let messageID, let body): s.connections[id].map { .send($0, messageID, body) }
                case .push(let id, let key): s.connections[id].map { .push($0, key) }
                case .rebuild: .rebuild
                case .askParent(let key, let hops): .askParent(key, hops)
                case .log(let event):
                    switch event {
                    case .subscriptionLimitReached(let id, _), .registrationRefused(let id, _, _):
                        .log(event, s.connections[id])
                    default: .log(event, nil)
                    }
                }
            }
        }

        /// Performs resolved actions, after the lock is released. Any thread.
        private func perform(_ actions: [Resolved]) {
            var pushes = 0
            for action in actions {
                switch action {
                case .send(let connection, let id, let body):
                    connection.sendFrame(messageID: id.rawValue, body: body)
                case .push(let connection, let key):
                    // Encodes nothing here: the route as the snapshot has it when the loop gets to it, so a push
                    // handed over after another can never carry an older body.
                    connection.loop.execute { [self] in
                        let (body, event) = state.withLock { $0.core.servedBody(for: key) }
                        if let event { log(event, peer: nil) }
                        body.withUnsafeBytes {
                            _ = connection.sendFrameInLoop(messageID: MessageID.getRouteResponse.rawValue, body: $0)
                        }
                    }
                    pushes += 1
                case .rebuild:
                    rebuildRequests.yield()
                case .askParent(let key, let hops):
                    var request = Switchyard_Names_ChainGetRouteRequest()
                    request.modid = key.modid
                    request.cmdid = key.cmdid
                    request.hops = hops
                    // Not connected: dropped; the connect asks again for every route (`parentConnected`).
                    _ = parent.withLock { $0 }?.send(request, id: MessageID.chainGetRouteRequest)
                case .log(let event, let connection):
                    log(event, peer: connection?.peerAddress)
                }
            }
            if pushes > 0 { metrics.pushes.increment(by: pushes) }
        }

        /// Everything here is a peer's doing (or its timer's): info at most.
        private func log(_ event: NameServiceCore.Event, peer: SocketAddress?) {
            let peer = peer.map { "\($0)" } ?? "gone"
            switch event {
            case .subscriptionLimitReached(let connection, let limit):
                // The core says so once per connection; many connections at their limit are one episode.
                let step = subscriptionLimitEpisode.withLock { $0.record(now: SystemInfo.monotonicNanoseconds()) }
                guard case .started(let ended) = step else { break }
                if ended > 0 {
                    logger.info("connections at their subscription limit: episode over",
                                metadata: ["count": "\(ended)"])
                }
                logger.info("a connection at its subscription limit: further routes answered, not pushed (per episode)",
                            metadata: ["peer.address": "\(peer)", "connection.id": "\(connection)",
                                       "subscription.limit": "\(limit)"])
            // One line per registration would be one per request of a flood: debug.
            case .registered(let key, let host, let ttlMs):
                logger.debug("host registered", metadata: [
                    "route.key": "\(key)", "host.address": "\(host)", "registration.ttl_ms": "\(ttlMs)"])
            case .deregistered(let key, let host):
                logger.debug("host deregistered", metadata: ["route.key": "\(key)", "host.address": "\(host)"])
            case .loadChanged(let key, let host, let load):
                logger.debug(load?.isFull == true ? "host full" : "host has room", metadata: [
                    "route.key": "\(key)", "host.address": "\(host)", "host.load": "\(load.map(\.description) ?? "-")",
                ])
            case .registrationRefused(let connection, let kind, let reason):
                logger.info("registrations refused (logged once per episode)", metadata: [
                    "peer.address": "\(peer)", "connection.id": "\(connection)", "registration.refusal": "\(kind)",
                    "registration.reason": "\(reason)"])
            case .notAskedOfParent(let key, let hops):
                logger.info("""
                    route not asked of the parent: the request passed the hop limit (a chain too long, or parents \
                    in a loop), or the parent's routes are at their limit; answered with what is held
                    """,
                            metadata: ["route.key": "\(key)", "chain.hops": "\(hops)",
                                       "chain.max_hops": "\(configuration.maxChainHops)"])
            case .registeredElsewhere(let key, let host):
                logger.debug("host registered through another replica", metadata: [
                    "route.key": "\(key)", "host.address": "\(host)"])
            case .registrationExpired(let key, let host):
                logger.debug("host registration ran out", metadata: ["route.key": "\(key)", "host.address": "\(host)"])
            case .routeTruncated(let key, let hostCount, let sent):
                metrics.routesTruncated.increment()
                logger.info("route has more hosts than fit in one Lars frame; answered with those that fit", metadata: [
                    "route.key": "\(key)", "route.hosts": "\(hostCount)", "reply.hosts": "\(sent)",
                    "frame.max_body": "\(LarsFrameLimit.maxBody)"])
            }
        }

        // MARK: Rebuilding the snapshot

        /// Brings the served snapshot up to date with every change made before the call, and pushes what changed.
        /// One caller builds at a time, outside the lock; a caller that finds a build running waits for it, and the
        /// builder goes on until nothing is stale, so its change is in when it returns.
        func rebuild() async {
            await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
                let build = state.withLock { s -> Bool in
                    if s.rebuilding {
                        s.rebuildWaiters.append(continuation)
                        return false
                    }
                    s.rebuilding = true
                    return true
                }
                guard build else { return }
                buildUntilCurrent()
                continuation.resume()
            }
        }

        private func buildUntilCurrent() {
            while true {
                let job = state.withLock { s -> (NameServiceCore.Rebuild?, [CheckedContinuation<Void, Never>]) in
                    if let rebuild = s.core.takeRebuild() { return (rebuild, []) }
                    s.rebuilding = false
                    defer { s.rebuildWaiters = [] }
                    return (nil, s.rebuildWaiters)
                }
                guard let rebuild = job.0 else {
                    for waiter in job.1 { waiter.resume() }
                    return
                }
                let fresh = rebuild.build()
                let actions = state.withLock { s in resolve(s.core.install(fresh, from: rebuild), in: s) }
                perform(actions)
            }
        }

        /// Rebuilds whenever a handler asks for it (registrations), until cancelled.
        func runRebuilds() async {
            for await _ in rebuildSignal {
                await rebuild()
            }
        }

        /// Drops registrations whose time ran out, until cancelled: sleeps until the earliest deadline, at most
        /// `expiryCheckLimit` (a registration with an earlier deadline may come meanwhile), and looks at nothing
        /// before that deadline, so holding many registrations costs nothing while none runs out.
        func runExpiry() async {
            while !Task.isCancelled {
                let next = state.withLock { $0.core.nextExpiry }
                let awake = ContinuousClock.now
                var wake = awake.advanced(by: Self.expiryCheckLimit)
                if let next, next < wake { wake = max(next, awake) }
                do {
                    try await Task.sleep(until: wake, clock: .continuous)
                } catch {
                    return
                }
                let now = ContinuousClock.now
                let (actions, registrations) = state.withLock { s in
                    (resolve(s.core.tick(now: now), in: s), s.core.registrationCount)
                }
                guard !actions.isEmpty else { continue }
                metrics.registrations.record(registrations)
                perform(actions)
            }
        }

        /// The longest the expiry task sleeps: how late a registration with a ttl shorter than this may run out.
        static let expiryCheckLimit: Duration = .milliseconds(500)

        // MARK: The database

        /// Polls RouteVersion until cancelled; see ``NameService``.
        func runPolling() async {
            var lastVersion: Int64?
            var lastFullReload = ContinuousClock.now
            var outageStart: ContinuousClock.Instant?
            var retention = configuration.routeChangeRetention.map { RouteChangeRetention<ContinuousClock.Instant>(
                retention: $0) }
            while !Task.isCancelled {
                do {
                    let version = try await RouteAdmin.currentVersion(on: pool)
                    // It answers again: reachable before the reload pushes what changed meanwhile (a failing reload
                    // makes it unreachable again below).
                    if outageStart != nil { reachable.store(true, ordering: .relaxed) }
                    let now = ContinuousClock.now
                    let full = now - lastFullReload >= configuration.fullReloadInterval
                    if version != lastVersion || full {
                        try await reload(since: lastVersion.flatMap { $0 == version ? nil : $0 }, version: version)
                        lastVersion = version
                        lastFullReload = now
                    }
                    if let start = outageStart {
                        outageStart = nil
                        logger.info("name service: database reachable again, routes reloaded", metadata: [
                            "outage.seconds": "\((ContinuousClock.now - start).components.seconds)",
                            "route.version": "\(version)",
                        ])
                    }
                    if retention != nil {
                        retention!.observe(version: version, at: now)
                        if let through = retention!.prunableVersion(now: now) {
                            // A failed delete is tried again at the next poll; it does not make the database
                            // unreachable for the routes.
                            if (try? await pruneRouteChanges(through: through)) != nil {
                                retention!.pruned(through: through)
                            }
                        }
                    }
                } catch {
                    if Task.isCancelled { break }
                    failedPolls.wrappingAdd(1, ordering: .relaxed)
                    metrics.failedPolls.increment()
                    reachable.store(false, ordering: .relaxed)
                    if outageStart == nil {
                        outageStart = .now
                        logger.info("name service: database unreachable, serving the last routes", metadata: [
                            "error.description": "\(error)", "route.version": "\(snapshot.version)",
                        ])
                    }
                }
                do {
                    try await Task.sleep(for: configuration.pollInterval)
                } catch {
                    break
                }
            }
        }

        // MARK: Registrations in the database

        /// Writes the registrations made through this replica to HostRegistration and reads those of the other
        /// replicas, until cancelled (``NameServiceConfiguration/registrationsInDatabase``): every
        /// `registrationSyncInterval` the changes since the last batch are written (one transaction per batch; a
        /// failed batch is written again with the next), every `pollInterval` the rows changed since the last read
        /// are read, and every `fullReloadInterval` all of them (then rows that ran out long ago are deleted).
        /// Writes and reads take turns on this task, so a read never races a write of this replica.
        func runRegistrationSync() async {
            guard configuration.registrationsInDatabase else { return }
            var lastRead: (wall: Int64, instant: ContinuousClock.Instant)?
            var lastFullRead = ContinuousClock.now
            var failing = false
            while !Task.isCancelled {
                do {
                    let now = ContinuousClock.now
                    if let writes = state.withLock({ $0.core.takeWrites(now: now) }) {
                        do {
                            try await write(writes)
                            state.withLock { $0.core.writesDone(writes) }
                        } catch {
                            state.withLock { $0.core.writesFailed(writes) }
                            throw error
                        }
                    }
                    let full = lastRead == nil || now - lastFullRead >= configuration.fullReloadInterval
                    if full || now - lastRead!.instant >= configuration.pollInterval {
                        let started = (wall: SystemInfo.unixMilliseconds(), instant: ContinuousClock.now)
                        try await readRegistrations(changedSince: full ? nil : lastRead!.wall - Self.clockSlackMs)
                        lastRead = started
                        if full {
                            lastFullRead = started.instant
                            try await deleteOldRegistrations(before: started.wall - Self.tombstoneRetentionMs)
                        }
                    }
                    if failing {
                        failing = false
                        logger.info("name service: registrations reach the database again")
                    }
                } catch {
                    if Task.isCancelled { break }
                    if !failing {
                        failing = true
                        logger.info("""
                            name service: registrations cannot reach the database; served from memory, written when \
                            it answers
                            """, metadata: ["error.description": "\(error)"])
                    }
                }
                do {
                    try await Task.sleep(for: configuration.registrationSyncInterval)
                } catch {
                    break
                }
            }
        }

        /// How far back (ms) a read of changed rows reaches before the previous read began: covers the clocks of
        /// the replicas disagreeing and a write committed after the row's `updated_ms` was taken.
        static let clockSlackMs: Int64 = 5000
        /// How long (ms) a tombstone or run-out row stays, so every replica reads it before it is deleted.
        static let tombstoneRetentionMs: Int64 = 60_000

        private static let registrationColumns = ["modid", "cmdid", "ip", "port", "expires_ms", "updated_ms",
                                                  "source", "host_load", "host_capacity", "weight"]

        /// Writes one batch in one transaction (chunks of 500 rows when the batch is larger).
        private func write(_ writes: NameServiceCore.RegistrationWrites) async throws {
            let upsert = pool.dialect.upsert(table: "HostRegistration", columns: Self.registrationColumns,
                                             conflict: ["modid", "cmdid", "ip", "port"])
            let now = ContinuousClock.now
            let wall = SystemInfo.unixMilliseconds()
            var start = 0
            while start < writes.rows.count {
                let chunk = writes.rows[start..<min(start + 500, writes.rows.count)]
                start += chunk.count
                try await pool.transaction { connection in
                    for row in chunk {
                        // A tombstone is 0: readers tell it from a row that ran out (served on for their grace).
                        let expires = row.takenBack ? 0 : wall + max(1, (row.expiry - now).millisecondsTruncated)
                        try await connection.execute(upsert, [
                            SQLValue(row.id.key.modid), SQLValue(row.id.key.cmdid), .integer(Int64(row.id.host.ip)),
                            .integer(Int64(row.id.host.port)), .integer(expires), .integer(wall),
                            .integer(Int64(row.source)), row.load.map { .integer(Int64($0.load)) } ?? .null,
                            row.load.map { .integer(Int64($0.capacity)) } ?? .null, .integer(Int64(row.weight)),
                        ])
                    }
                }
            }
        }

        /// Reads HostRegistration (every row, or those written since `changedSince`, wall-clock ms) into the core.
        private func readRegistrations(changedSince: Int64?) async throws {
            let writtenThrough = state.withLock { $0.core.writtenEpoch }
            var sql = "SELECT modid, cmdid, ip, port, expires_ms, source, host_load, host_capacity, weight "
                + "FROM HostRegistration"
            var parameters: [SQLValue] = []
            if let changedSince {
                sql += " WHERE updated_ms >= ?"
                parameters.append(.integer(changedSince))
            }
            let rows = try await pool.query(sql, parameters).rows
            let now = ContinuousClock.now
            let wall = SystemInfo.unixMilliseconds()
            var stored: [NameServiceCore.StoredRegistration] = []
            stored.reserveCapacity(rows.count)
            for row in rows {
                guard let modid = try? row.decode(0, as: Int32.self), let cmdid = try? row.decode(1, as: Int32.self),
                      let ip = try? row.decode(2, as: UInt32.self),
                      let port = (try? row.decode(3, as: Int.self)).flatMap({ UInt16(exactly: $0) }),
                      let expires = try? row.decode(4, as: Int64.self)
                else { continue }
                let source = (try? row.decode(5, as: UInt32.self)) ?? 0
                var load: HostLoad?
                if let value = try? row.decode(6, as: UInt32?.self),
                   let capacity = try? row.decode(7, as: UInt32?.self) {
                    load = HostLoad(load: value, capacity: capacity)
                }
                let weight = (try? row.decode(8, as: UInt32?.self)).flatMap { $0 }.map { min($0, HostWeight.max) }
                    ?? HostWeight.standard
                // Clamped to a day either way: a row far off (a broken clock) neither wraps nor lives for ever.
                let offset = max(-86_400_000, min(86_400_000, expires - wall))
                stored.append(NameServiceCore.StoredRegistration(
                    id: .init(key: RouteKey(modid: modid, cmdid: cmdid), host: Host(ip: ip, port: port)),
                    expiry: now.advanced(by: .milliseconds(offset)), source: source, load: load, weight: weight,
                    takenBack: expires == 0))
            }
            let (actions, registrations) = state.withLock { s in
                (resolve(s.core.registrationsLoaded(stored, complete: changedSince == nil,
                                                    writtenThrough: writtenThrough, now: now), in: s),
                 s.core.registrationCount)
            }
            guard !actions.isEmpty else { return }
            metrics.registrations.record(registrations)
            perform(actions)
        }

        /// Deletes rows that ran out (or were taken back) and were last written before `wall` (ms).
        private func deleteOldRegistrations(before wall: Int64) async throws {
            try await pool.execute("DELETE FROM HostRegistration WHERE expires_ms < ? AND updated_ms < ?",
                                   [.integer(wall), .integer(wall)])
        }

        /// Deletes the RouteChange rows at or below `version` (``RouteChangeRetention`` says when).
        func pruneRouteChanges(through version: Int64) async throws {
            let deleted = try await pool.execute("DELETE FROM RouteChange WHERE version <= ?", [.integer(version)])
            routeChangesPruned.wrappingAdd(Int(deleted), ordering: .relaxed)
            if deleted > 0 {
                logger.debug("name service: old RouteChange rows deleted", metadata: [
                    "route.version": "\(version)", "route_change.deleted": "\(deleted)",
                ])
            }
        }

        /// Loads RouteData, rebuilds the snapshot and pushes every route that changed: those named by RouteChange
        /// rows after `since` (when given) and those whose hosts differ from the previous snapshot.
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
            // A Lars database has no ModuleToken table: no tokens from it (the configuration's still apply).
            var tokens = (try? await RouteAdmin.moduleTokens(on: pool)) ?? [:]
            tokens.merge(configuration.moduleTokens) { _, configured in configured }
            state.withLock { $0.core.tokensLoaded(tokens) }
            _ = state.withLock { $0.core.databaseLoaded(version: version, entries: entries, changed: changed) }
            metrics.reloads.increment()
            await rebuild()
        }
    }
}
