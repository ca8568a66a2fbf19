import LarsProtocol
import LoadBalancing
import RouteStore
import SwiftProtobuf

/// The name service's state and rules: the routes served, who is subscribed to which route, the self-registered
/// hosts and their expiry. A value with no locks, no clock, no sockets and no tasks: every input names the
/// connection by id and brings the time (`now`), and the answer is a list of ``Action``s for the shell
/// (``NameService``) to perform.
///
///     getRoute(key, from: id)              subscribe id to key (up to the limit), then reply from what is served
///     register(request, from:, source:)    add, refresh or take back a host with a time to live (within the
///                                          global, per-source and per-route limits); the route is updated in
///                                          place and pushed; reply. A reported load is kept and served with
///                                          the route; a host becoming full (or not) is pushed
///     connectionClosed(id)                 forget id: it is pushed nothing more
///     databaseLoaded(version, ...)         RouteData as loaded; the database snapshot is rebuilt from it
///     tick(now)                            registrations whose time ran out are dropped (a heap of deadlines:
///                                          nothing is looked at before the earliest one)
///     takeRebuild() / install(...)         build the database snapshot off the lock, swap it in, push changes
///
/// What is served is two layers: the database snapshot (``RouteSnapshot``, rebuilt on a database load only) and,
/// for each route that has registered hosts, its merged hosts and encoded answer, recomputed from that route alone
/// when it is read after one of its registrations changed. So one registration costs the same however many are
/// held (a dictionary and a heap insert), and a burst for one route is encoded once.
///
/// Ordering: a reply is read at the moment of the request, after the subscription, so a change installed later
/// pushes to this connection too. A push carries no body: the shell sends the route as it is served when it
/// performs the push, so a push performed later never carries an older body than one before it.
struct NameServiceCore {
    private struct Subscriber {
        var keys: Set<RouteKey> = []
        var warnedFull = false
    }

    /// One self-registered host: when it runs out, and which source address registered it first (the one whose
    /// count it is in).
    private struct Registration {
        var expiry: ContinuousClock.Instant
        var source: UInt32
        /// The load it reported last (nil: none), handed out with the route.
        var load: HostLoad?
        /// The weight it registered with last (``HostWeight``; 1 when it gave none).
        var weight: UInt32 = HostWeight.standard
        /// Learned from the database (registered through another replica), not through a connection of this one.
        var remote = false
        /// The ``RegistrationWrites/epoch`` of the last write that carried it (0: never written).
        var writtenEpoch = 0
    }

    /// A deadline in the expiry heap. Stale once its registration was refreshed or taken back (the expiry no
    /// longer matches): skipped when it comes up.
    private struct Deadline: Comparable {
        var expiry: ContinuousClock.Instant
        var key: RouteKey
        var host: Host
        static func < (a: Deadline, b: Deadline) -> Bool { a.expiry < b.expiry }
        static func == (a: Deadline, b: Deadline) -> Bool { a.expiry == b.expiry }
    }

    let limits: Limits
    /// RouteData as of the last ``install(_:from:)`` (without the registrations).
    private var database: RouteSnapshot = .empty
    /// The merged hosts and answer of every route that has registered hosts.
    private var registered: [RouteKey: ServedRoutes.Route] = [:]
    /// Routes whose registered hosts changed since their entry of `registered` was computed.
    private var staleRoutes: Set<RouteKey> = []
    private var databaseState: (version: Int64, entries: [RouteEntry]) = (-1, [])
    private var subscribers: [UInt64: Subscriber] = [:]
    private var subscriptions: [RouteKey: Set<UInt64>] = [:]
    /// Self-registered hosts: route -> host -> registration.
    private var registrations: [RouteKey: [Host: Registration]] = [:]
    private var perSource: [UInt32: Int] = [:]
    private var deadlines = MinHeap<Deadline>()
    /// When each kind of refusal was last logged / last happened (an episode ends after `refusalQuiet` without).
    private var lastRefusal: [RefusalKind: ContinuousClock.Instant] = [:]
    static let refusalQuiet: Duration = .seconds(10)
    private var pendingPushes: Set<RouteKey> = []
    /// Owner tokens by module: a module here takes registrations only with its token.
    private var tokens: [Int32: String] = [:]
    /// The parent's answers for routes asked of it (served where this service has no hosts of its own).
    private var inherited: [RouteKey: ServedRoutes.Route] = [:]
    /// Routes asked of the parent, with the hop count they were asked with.
    private var askedOfParent: [RouteKey: UInt32] = [:]
    /// Routes refused a parent request (logged once each; bounded like `askedOfParent`).
    private var notAsked: Set<RouteKey> = []
    /// Registrations changed through this replica and not yet handed to the shell for writing.
    private var unwritten: Set<RegistrationID> = []
    /// The epoch of the last ``takeWrites(now:)`` (the writes of one epoch are one batch).
    private(set) var writeEpoch = 0
    /// The epoch of the last batch written (``writesDone(_:)``); batches are written one at a time, in order.
    private(set) var writtenEpoch = 0
    /// Registration rows handed to the shell for writing.
    private(set) var registrationRowsWritten = 0
    /// Taken-back registrations whose tombstone was not written because too many writes were waiting (the
    /// database unreachable): the row then stays until its expiry.
    private(set) var tombstonesDropped = 0
    private var stale = false
    private var rebuildRequested = false

    /// GetRouteRequests answered.
    private(set) var requests = 0
    /// Pushes handed out.
    private(set) var pushes = 0
    /// Database loads.
    private(set) var reloads = 0
    /// (route, connection) subscriptions.
    private(set) var subscriptionCount = 0
    /// Live self-registrations.
    private(set) var registrationCount = 0
    /// Registrations refused, by any limit or check.
    private(set) var registrationsRefused = 0
    /// Routes found with more hosts than fit in one frame (each counted when it starts to be cut).
    private(set) var routesTruncated = 0
    /// Merged answers computed for routes with registered hosts (the work registrations cause).
    private(set) var routeMerges = 0

    init(limits: Limits) {
        self.limits = limits
    }

    /// What is served: the database snapshot with the registered hosts merged in (stale routes merged into the
    /// copy; the core is not changed).
    var snapshot: ServedRoutes {
        var current = registered
        for key in staleRoutes { current[key] = merge(key) }
        return ServedRoutes(database: database, registered: current, inherited: inherited)
    }

    /// The GetRouteResponse body served for a route (for inspection; ``servedBody(for:)`` caches it).
    func responseBody(for key: RouteKey) -> [UInt8] {
        if staleRoutes.contains(key) { return merge(key)?.body ?? ownOrInheritedBody(key) }
        return registered[key]?.body ?? ownOrInheritedBody(key)
    }

    /// The database's answer, or the parent's when the database has no hosts for the route.
    private func ownOrInheritedBody(_ key: RouteKey) -> [UInt8] {
        if let parent = inherited[key], database.hosts(for: key).isEmpty { return parent.body }
        return database.responseBody(for: key)
    }

    /// The earliest registration deadline (nil when none is held): the shell's expiry task sleeps until then.
    var nextExpiry: ContinuousClock.Instant? { deadlines.min?.expiry }

    /// Entries in the expiry heap (live and stale), for tests: stays within about twice the registrations.
    var deadlineCount: Int { deadlines.count }

    // MARK: Requests

    /// A GetRouteRequest from a connection: subscribes it to the route (below its limit), then answers. `hops`:
    /// the name services the request came through (0 from an agent; a child name service's id 110 says). With a
    /// parent, a route this service has no hosts for is asked of the parent (once; answered now with what is held,
    /// pushed when the parent answers).
    mutating func getRoute(_ key: RouteKey, from connection: UInt64, hops: UInt32 = 0) -> [Action] {
        requests += 1
        var actions: [Action] = []
        if limits.hasParent, askedOfParent[key] == nil, registrations[key] == nil, database.hosts(for: key).isEmpty {
            if Int(hops) + 1 <= limits.maxChainHops, askedOfParent.count < limits.maxParentRoutes {
                askedOfParent[key] = hops + 1
                actions.append(.askParent(key, hops: hops + 1))
            } else if notAsked.count < limits.maxParentRoutes, notAsked.insert(key).inserted {
                actions.append(.log(.notAskedOfParent(key, hops: hops)))
            }
        }
        var subscriber = subscribers[connection] ?? Subscriber()
        if !subscriber.keys.contains(key) {
            if subscriber.keys.count < limits.maxSubscriptionsPerConnection {
                subscriber.keys.insert(key)
                subscriptions[key, default: []].insert(connection)
                subscriptionCount += 1
            } else if !subscriber.warnedFull {
                subscriber.warnedFull = true
                actions.append(.log(.subscriptionLimitReached(connection: connection,
                                                              limit: limits.maxSubscriptionsPerConnection)))
            }
        }
        subscribers[connection] = subscriber
        let (body, event) = servedBody(for: key)
        if let event { actions.append(.log(event)) }
        actions.append(.send(connection: connection, id: .getRouteResponse, body: body))
        return actions
    }

    /// A server registering itself (ttl > 0: added or refreshed) or taking its registration back (ttl 0). `source`
    /// is the connection's IPv4 address (reading order): the per-source limit counts by it.
    mutating func register(_ request: Switchyard_Lb_RegisterHostRequest, from connection: UInt64, source: UInt32,
                           now: ContinuousClock.Instant) -> [Action] {
        let key = RouteKey(modid: request.modid, cmdid: request.cmdid)
        var reply = Switchyard_Lb_RegisterHostResponse()
        reply.modid = request.modid
        reply.cmdid = request.cmdid
        func refuse(_ kind: RefusalKind, _ reason: String) -> [Action] {
            reply.reason = reason
            registrationsRefused += 1
            var actions: [Action] = []
            let inEpisode = lastRefusal[kind].map { now - $0 < Self.refusalQuiet } ?? false
            if !inEpisode {
                actions.append(.log(.registrationRefused(connection: connection, kind: kind, reason: reason)))
            }
            lastRefusal[kind] = now
            actions.append(.send(connection: connection, id: .registerHostResponse, body: Self.encode(reply)))
            return actions
        }
        if let required = tokens[request.modid], !request.hasToken || request.token != required {
            return refuse(.badToken, request.hasToken ? "wrong token for module \(request.modid)"
                          : "module \(request.modid) takes registrations with its owner token only")
        }
        guard let host = Host(wireIP: request.ip, wirePort: request.port), host.ip != 0, host.port != 0 else {
            return refuse(.badHost, "bad host: ip \(UInt32(bitPattern: request.ip)), port \(request.port)")
        }
        let ttl = Duration.milliseconds(Int64(request.ttlMs))
        guard ttl <= limits.maxRegistrationTTL else {
            return refuse(.ttlTooLong, "ttl \(request.ttlMs) ms is above the limit of \(limits.maxRegistrationTTL)")
        }
        guard !request.hasWeight || HostWeight.isValid(Int(request.weight)) else {
            return refuse(.badWeight, "weight \(request.weight) is above the limit of \(HostWeight.max)")
        }
        let weight = request.hasWeight ? request.weight : HostWeight.standard
        let load = request.hasLoad && request.hasCapacity
            ? HostLoad(load: request.load, capacity: request.capacity) : nil
        var actions: [Action] = []
        if request.ttlMs == 0 {
            if let gone = registrations[key]?.removeValue(forKey: host) {
                if registrations[key]?.isEmpty == true { registrations[key] = nil }
                forget(gone)
                markUnwritten(RegistrationID(key: key, host: host), tombstone: true)
                actions.append(.log(.deregistered(key, host)))
                routeChanged(key, &actions)
            }
        } else if let held = registrations[key]?[host] {
            let expiry = now.advanced(by: ttl)
            registrations[key]![host]!.expiry = expiry
            registrations[key]![host]!.load = load
            registrations[key]![host]!.remote = false
            markUnwritten(RegistrationID(key: key, host: host), tombstone: false)
            registrations[key]![host]!.weight = weight
            addDeadline(Deadline(expiry: expiry, key: key, host: host))
            if held.weight != weight {
                routeChanged(key, &actions)  // a new share of the picks: pushed at once
            } else if held.load != load {
                // Full or not any more: pushed at once, so agents stop (or start) sending keys there. Only the count
                // changed: served from the next read on, pushed with the next change (a heartbeat costs no push).
                if (held.load?.isFull ?? false) != (load?.isFull ?? false) {
                    actions.append(.log(.loadChanged(key, host, load: load)))
                    routeChanged(key, &actions)
                } else {
                    staleRoutes.insert(key)
                }
            }
        } else if registrationCount >= limits.maxRegistrations {
            return refuse(.globalLimit, "the name service holds its limit of \(limits.maxRegistrations) registrations")
        } else if perSource[source, default: 0] >= limits.maxRegistrationsPerSource {
            return refuse(.sourceLimit,
                          "this source holds its limit of \(limits.maxRegistrationsPerSource) registrations")
        } else if registrations[key]?.count ?? 0 >= limits.maxRegistrationsPerRoute {
            return refuse(.routeLimit,
                          "route \(key) holds its limit of \(limits.maxRegistrationsPerRoute) registered hosts")
        } else {
            let expiry = now.advanced(by: ttl)
            registrations[key, default: [:]][host] = Registration(expiry: expiry, source: source, load: load,
                                                                  weight: weight)
            markUnwritten(RegistrationID(key: key, host: host), tombstone: false)
            perSource[source, default: 0] += 1
            registrationCount += 1
            addDeadline(Deadline(expiry: expiry, key: key, host: host))
            actions.append(.log(.registered(key, host, ttlMs: request.ttlMs)))
            routeChanged(key, &actions)
        }
        reply.ok = true
        actions.append(.send(connection: connection, id: .registerHostResponse, body: Self.encode(reply)))
        return actions
    }

    /// A connection closed: it is unsubscribed from everything and gets nothing more.
    mutating func connectionClosed(_ connection: UInt64) {
        guard let subscriber = subscribers.removeValue(forKey: connection) else { return }
        for key in subscriber.keys {
            subscriptions[key]?.remove(connection)
            if subscriptions[key]?.isEmpty == true { subscriptions[key] = nil }
        }
        subscriptionCount -= subscriber.keys.count
    }

    // MARK: Database and time

    /// RouteData as loaded at `version`; `changed` names the routes RouteChange rows say changed since the last
    /// load (pushed even when their hosts look the same).
    mutating func databaseLoaded(version: Int64, entries: [RouteEntry], changed: Set<RouteKey>) -> [Action] {
        databaseState = (version, entries)
        reloads += 1
        pendingPushes.formUnion(changed)
        stale = true
        if rebuildRequested { return [] }
        rebuildRequested = true
        return [.rebuild]
    }

    /// Drops the registrations whose time ran out by `now`. Looks at nothing before the earliest deadline.
    mutating func tick(now: ContinuousClock.Instant) -> [Action] {
        var actions: [Action] = []
        var changed: Set<RouteKey> = []
        while let top = deadlines.min, top.expiry <= now {
            _ = deadlines.popMin()
            guard let registration = registrations[top.key]?[top.host], registration.expiry == top.expiry else {
                continue  // refreshed since, or taken back
            }
            registrations[top.key]![top.host] = nil
            if registrations[top.key]!.isEmpty { registrations[top.key] = nil }
            forget(registration)
            actions.append(.log(.registrationExpired(top.key, top.host)))
            changed.insert(top.key)
        }
        for key in changed { routeChanged(key, &actions) }
        return actions
    }

    private mutating func forget(_ registration: Registration) {
        registrationCount -= 1
        perSource[registration.source]! -= 1
        if perSource[registration.source] == 0 { perSource[registration.source] = nil }
    }

    /// Adds a deadline; when stale entries (refreshed registrations) outnumber the live ones, the heap is rebuilt
    /// from the registrations (O(n) once per n heartbeats).
    private mutating func addDeadline(_ deadline: Deadline) {
        deadlines.insert(deadline)
        guard deadlines.count > 2 * registrationCount + 1024 else { return }
        var live: [Deadline] = []
        live.reserveCapacity(registrationCount)
        for (key, hosts) in registrations {
            for (host, registration) in hosts {
                live.append(Deadline(expiry: registration.expiry, key: key, host: host))
            }
        }
        deadlines = MinHeap(live)
    }

    /// A route's registered hosts changed: its merged answer is marked stale (recomputed from this route alone
    /// when it is next read: a burst of registrations for one route is merged and encoded once) and pushed.
    private mutating func routeChanged(_ key: RouteKey, _ actions: inout [Action]) {
        staleRoutes.insert(key)
        pushToSubscribers(key, &actions)
    }

    /// The merged hosts and answer of a route that has registered hosts (nil when it has none).
    private func merge(_ key: RouteKey) -> ServedRoutes.Route? {
        guard let hosts = registrations[key], !hosts.isEmpty else { return nil }
        let merged = Array(Set(database.hosts(for: key)).union(hosts.keys)).sorted()
        var loads: [Host: HostLoad] = [:]
        var weights = database.weights(for: key)
        for (host, registration) in hosts {
            loads[host] = registration.load
            weights[host] = registration.weight  // a registered host's own weight wins over its RouteData row's
        }
        let (body, sent) = RouteSnapshot.encodeResponse(key, merged, loads: loads, weights: weights)
        return ServedRoutes.Route(hosts: merged, body: body, truncated: sent < merged.count, sent: sent)
    }

    /// Brings a stale route's merged answer up to date; returns the log event when it is cut for the first time.
    private mutating func refresh(_ key: RouteKey) -> Event? {
        guard staleRoutes.remove(key) != nil else { return nil }
        let wasTruncated = registered[key]?.truncated ?? (database.truncatedHostCount(for: key) != nil)
        let route = merge(key)
        routeMerges += 1
        registered[key] = route
        guard let route, route.truncated, !wasTruncated else { return nil }
        routesTruncated += 1
        return .routeTruncated(key, hostCount: route.hosts.count, sent: route.sent)
    }

    /// The answer served for a route, brought up to date first (the shell's pushes read it here, under its lock),
    /// and the log event when that made it cut for the first time.
    mutating func servedBody(for key: RouteKey) -> (body: [UInt8], event: Event?) {
        let event = refresh(key)
        return (registered[key]?.body ?? ownOrInheritedBody(key), event)
    }

    private mutating func pushToSubscribers(_ key: RouteKey, _ actions: inout [Action]) {
        for connection in subscriptions[key] ?? [] {
            actions.append(.push(connection: connection, route: key))
            pushes += 1
        }
    }

    /// The modules' owner tokens as configured (the database's rows and the configuration's, the latter winning).
    mutating func tokensLoaded(_ loaded: [Int32: String]) {
        tokens = loaded
    }

    /// Modules with an owner token.
    var tokenCount: Int { tokens.count }

    // MARK: A parent name service (regional)

    /// The parent answered (or pushed) a route: held and served where this service has no hosts of its own, and
    /// pushed to its subscribers when that changes what they are served.
    mutating func parentAnswered(_ key: RouteKey, hosts: [Host], loads: [Host: HostLoad]) -> [Action] {
        guard askedOfParent[key] != nil else { return [] }
        let sorted = Array(Set(hosts)).sorted()
        let (body, sent) = RouteSnapshot.encodeResponse(key, sorted, loads: loads)
        let route = ServedRoutes.Route(hosts: sorted, body: body, truncated: sent < sorted.count, sent: sent)
        guard inherited[key] != route else { return [] }
        inherited[key] = route
        var actions: [Action] = []
        if registrations[key] == nil, database.hosts(for: key).isEmpty { pushToSubscribers(key, &actions) }
        return actions
    }

    /// Connected (again) to the parent: every route asked of it is asked again (the parent's subscriptions were
    /// those of the lost connection).
    func parentConnected() -> [Action] {
        askedOfParent.sorted { ($0.key.modid, $0.key.cmdid) < ($1.key.modid, $1.key.cmdid) }
            .map { .askParent($0.key, hops: $0.value) }
    }

    /// Routes asked of the parent.
    var parentRouteCount: Int { askedOfParent.count }

    // MARK: Registrations in the database (replicas)

    /// Records a registration change for the next write. A tombstone is not recorded when the writes waiting
    /// already reach the registration limit (the database is away): its row stays until its expiry.
    private mutating func markUnwritten(_ id: RegistrationID, tombstone: Bool) {
        if tombstone, unwritten.count >= limits.maxRegistrations, !unwritten.contains(id) {
            tombstonesDropped += 1
            return
        }
        unwritten.insert(id)
    }

    /// The rows to write for the changes made through this replica since the last call (nil when none), as the
    /// registrations are now: a held registration is written with its expiry, a taken-back one as a tombstone.
    /// Starts a new ``writeEpoch``. Call ``writesFailed(_:)`` when the batch could not be written.
    mutating func takeWrites(now: ContinuousClock.Instant) -> RegistrationWrites? {
        guard !unwritten.isEmpty else { return nil }
        writeEpoch += 1
        var rows: [StoredRegistration] = []
        rows.reserveCapacity(unwritten.count)
        for id in unwritten {
            if let registration = registrations[id.key]?[id.host] {
                registrations[id.key]![id.host]!.writtenEpoch = writeEpoch
                rows.append(StoredRegistration(id: id, expiry: registration.expiry, source: registration.source,
                                               load: registration.load, weight: registration.weight))
            } else {
                rows.append(StoredRegistration(id: id, expiry: now, source: 0, load: nil, takenBack: true))
            }
        }
        unwritten = []
        registrationRowsWritten += rows.count
        return RegistrationWrites(rows: rows, epoch: writeEpoch)
    }

    /// A batch of ``takeWrites(now:)`` was written.
    mutating func writesDone(_ writes: RegistrationWrites) {
        writtenEpoch = max(writtenEpoch, writes.epoch)
    }

    /// A batch of ``takeWrites(now:)`` was not written: its registrations are written again with the next batch
    /// (as they are then).
    mutating func writesFailed(_ writes: RegistrationWrites) {
        writtenEpoch = max(writtenEpoch, writes.epoch)
        registrationRowsWritten -= writes.rows.count
        for row in writes.rows { markUnwritten(row.id, tombstone: registrations[row.id.key]?[row.id.host] == nil) }
    }

    /// HostRegistration rows as read from the database, by a read that began when ``writtenEpoch`` was
    /// `writtenThrough`: registrations made through other replicas are served (until their expiry plus
    /// ``Limits/remoteGrace``) and pushed when they come, change fullness or go. A row never overrides a change
    /// this replica made after it: one not written yet, or written by a batch the read may not have seen. A
    /// held registration takes a row's expiry only when it is later than its own. With `complete` (every row was
    /// read) a registration missing from the rows is dropped, under the same rule.
    mutating func registrationsLoaded(_ rows: [StoredRegistration], complete: Bool, writtenThrough: Int,
                                      now: ContinuousClock.Instant) -> [Action] {
        var actions: [Action] = []
        var changed: Set<RouteKey> = []
        var seen: Set<RegistrationID> = []
        if complete { seen.reserveCapacity(rows.count) }
        /// Whether this replica changed the registration after what the read saw.
        func newerHere(_ id: RegistrationID, _ registration: Registration) -> Bool {
            !registration.remote && (unwritten.contains(id) || registration.writtenEpoch > writtenThrough)
        }
        for row in rows {
            if complete { seen.insert(row.id) }
            let (key, host) = (row.id.key, row.id.host)
            if let held = registrations[key]?[host] {
                if row.takenBack {
                    // Another replica took the host back.
                    if !newerHere(row.id, held) { drop(row.id, &actions, &changed) }
                    continue
                }
                let expiry = row.expiry.advanced(by: limits.remoteGrace)
                guard row.expiry > held.expiry || (held.remote && expiry > held.expiry) else { continue }
                // Refreshed through another replica: served from its row from now on.
                registrations[key]![host]!.expiry = expiry
                registrations[key]![host]!.remote = true
                addDeadline(Deadline(expiry: expiry, key: key, host: host))
                if held.weight != row.weight {
                    registrations[key]![host]!.weight = row.weight
                    registrations[key]![host]!.load = row.load
                    changed.insert(key)
                } else if held.load != row.load {
                    registrations[key]![host]!.load = row.load
                    if (held.load?.isFull ?? false) != (row.load?.isFull ?? false) {
                        actions.append(.log(.loadChanged(key, host, load: row.load)))
                        changed.insert(key)
                    } else {
                        staleRoutes.insert(key)
                    }
                }
            } else if !row.takenBack, row.expiry.advanced(by: limits.remoteGrace) > now, !unwritten.contains(row.id),
                      registrationCount < limits.maxRegistrations {
                let expiry = row.expiry.advanced(by: limits.remoteGrace)
                registrations[key, default: [:]][host] = Registration(expiry: expiry, source: row.source,
                                                                      load: row.load, weight: row.weight, remote: true)
                perSource[row.source, default: 0] += 1
                registrationCount += 1
                addDeadline(Deadline(expiry: expiry, key: key, host: host))
                actions.append(.log(.registeredElsewhere(key, host)))
                changed.insert(key)
            }
        }
        if complete {
            var missing: [RegistrationID] = []
            for (key, hosts) in registrations {
                for (host, registration) in hosts {
                    let id = RegistrationID(key: key, host: host)
                    if !seen.contains(id), !newerHere(id, registration) { missing.append(id) }
                }
            }
            for id in missing { drop(id, &actions, &changed) }
        }
        for key in changed { routeChanged(key, &actions) }
        return actions
    }

    /// Drops a registration another replica took back (or whose row is gone).
    private mutating func drop(_ id: RegistrationID, _ actions: inout [Action], _ changed: inout Set<RouteKey>) {
        guard let gone = registrations[id.key]?.removeValue(forKey: id.host) else { return }
        if registrations[id.key]?.isEmpty == true { registrations[id.key] = nil }
        forget(gone)
        actions.append(.log(.deregistered(id.key, id.host)))
        changed.insert(id.key)
    }

    // MARK: Rebuilding the database snapshot

    /// What the next database snapshot is built from, or nil when the served one is current. Clears the request: a
    /// database load after this gives another ``Action/rebuild``.
    mutating func takeRebuild() -> Rebuild? {
        rebuildRequested = false
        guard stale else { return nil }
        stale = false
        defer { pendingPushes = [] }
        return Rebuild(version: databaseState.version, entries: databaseState.entries, previous: database,
                       pushing: pendingPushes)
    }

    /// Swaps in a database snapshot built from `rebuild`, re-merges the registered hosts of the routes whose
    /// database hosts changed, and pushes every route that changed (and those `rebuild` names) to its subscribers.
    mutating func install(_ fresh: RouteSnapshot, from rebuild: Rebuild) -> [Action] {
        let changedInDatabase = fresh.changedRoutes(since: database)
        var actions: [Action] = []
        for (key, hostCount) in fresh.truncatedRoutes where database.truncatedHostCount(for: key) == nil {
            if registrations[key] == nil {
                routesTruncated += 1
                actions.append(.log(.routeTruncated(key, hostCount: hostCount, sent: fresh.sentHostCount(for: key))))
            }
        }
        database = fresh
        for key in changedInDatabase where registrations[key] != nil { staleRoutes.insert(key) }
        for key in rebuild.pushing.union(changedInDatabase) { pushToSubscribers(key, &actions) }
        return actions
    }

    /// ``takeRebuild()``, build and ``install(_:from:)`` in one step (nothing when the snapshot is current).
    mutating func rebuildNow() -> [Action] {
        guard let rebuild = takeRebuild() else { return [] }
        return install(rebuild.build(), from: rebuild)
    }

    private static func encode(_ reply: Switchyard_Lb_RegisterHostResponse) -> [UInt8] {
        (try? reply.serializedBytes()) ?? []
    }
}
