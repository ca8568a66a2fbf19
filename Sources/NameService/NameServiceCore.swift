import LarsProtocol
import LoadBalancing
import RouteStore
import SwiftProtobuf

/// The name service's state and rules: the routes served, who is subscribed to which route, the self-registered
/// hosts and their expiry. A value with no locks, no clock, no sockets and no tasks: every input names the
/// connection by id and brings the time (`now`), and the answer is a list of ``Action``s for the shell
/// (``NameService``) to perform.
///
///     getRoute(key, from: id)          subscribe id to key (up to the limit), then reply from the snapshot
///     register(request, from: id, now) add, refresh or take back a host with a time to live; reply
///     connectionClosed(id)             forget id: it is pushed nothing more
///     databaseLoaded(version, ...)     RouteData as loaded; the snapshot is rebuilt from it
///     tick(now)                        registrations whose time ran out are dropped
///     takeRebuild() / install(...)     build the snapshot off the lock, then swap it in and push what changed
///
/// Ordering: a reply is read from the snapshot at the moment of the request, after the subscription, so a snapshot
/// installed later pushes to this connection too. A push carries no body: the shell sends the route as the snapshot
/// has it when it performs the push, so a push performed later never carries an older body than one before it.
struct NameServiceCore {
    /// What the shell does.
    enum Action: Equatable {
        /// Send this frame to the connection now (a reply, encoded at the moment of the request).
        case send(connection: UInt64, id: MessageID, body: [UInt8])
        /// Send the route to the connection as the served snapshot has it when the push is performed.
        case push(connection: UInt64, route: RouteKey)
        /// The served snapshot is behind the database or the registrations: rebuild it (``takeRebuild()``, then
        /// ``install(_:from:)``), off the loops. Given once until the rebuild is taken.
        case rebuild
        /// Worth a log line.
        case log(Event)
    }

    /// What the shell logs.
    enum Event: Equatable {
        /// A connection reached its subscription limit; its further routes are answered, not pushed. Once per
        /// connection.
        case subscriptionLimitReached(connection: UInt64, limit: Int)
        case registered(RouteKey, Host, ttlMs: UInt32)
        case deregistered(RouteKey, Host)
        case registrationRefused(connection: UInt64, reason: String)
        case registrationExpired(RouteKey, Host)
    }

    /// The inputs of one snapshot build, taken under the lock and built outside it.
    struct Rebuild {
        let version: Int64
        let entries: [RouteEntry]
        let previous: RouteSnapshot
        /// Routes to push even if their hosts did not change (named by RouteChange rows).
        let pushing: Set<RouteKey>

        func build() -> RouteSnapshot { RouteSnapshot(version: version, entries: entries, reusing: previous) }
    }

    /// The limits the core enforces.
    struct Limits: Equatable {
        var maxSubscriptionsPerConnection: Int
        var maxRegistrations: Int
        var maxRegistrationTTL: Duration

        init(_ configuration: NameServiceConfiguration) {
            maxSubscriptionsPerConnection = configuration.maxSubscriptionsPerConnection
            maxRegistrations = configuration.maxRegistrations
            maxRegistrationTTL = configuration.maxRegistrationTTL
        }
    }

    private struct Subscriber {
        var keys: Set<RouteKey> = []
        var warnedFull = false
    }

    let limits: Limits
    /// The routes served: RouteData as last loaded plus the live registrations, as of the last ``install(_:from:)``.
    private(set) var snapshot: RouteSnapshot = .empty
    private var database: (version: Int64, entries: [RouteEntry]) = (-1, [])
    private var subscribers: [UInt64: Subscriber] = [:]
    private var subscriptions: [RouteKey: Set<UInt64>] = [:]
    /// Self-registered hosts: route -> host -> when its registration runs out.
    private var registrations: [RouteKey: [Host: ContinuousClock.Instant]] = [:]
    private var pendingPushes: Set<RouteKey> = []
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

    init(limits: Limits) {
        self.limits = limits
    }

    // MARK: Requests

    /// A GetRouteRequest from a connection: subscribes it to the route (below its limit), then answers from the
    /// snapshot.
    mutating func getRoute(_ key: RouteKey, from connection: UInt64) -> [Action] {
        requests += 1
        var actions: [Action] = []
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
        actions.append(.send(connection: connection, id: .getRouteResponse, body: snapshot.responseBody(for: key)))
        return actions
    }

    /// A server registering itself (ttl > 0: added or refreshed) or taking its registration back (ttl 0).
    mutating func register(_ request: Switchyard_Lb_RegisterHostRequest, from connection: UInt64,
                           now: ContinuousClock.Instant) -> [Action] {
        let key = RouteKey(modid: request.modid, cmdid: request.cmdid)
        var reply = Switchyard_Lb_RegisterHostResponse()
        reply.modid = request.modid
        reply.cmdid = request.cmdid
        func refuse(_ reason: String) -> [Action] {
            reply.reason = reason
            return [.log(.registrationRefused(connection: connection, reason: reason)),
                    .send(connection: connection, id: .registerHostResponse, body: Self.encode(reply))]
        }
        guard let host = Host(wireIP: request.ip, wirePort: request.port), host.ip != 0, host.port != 0 else {
            return refuse("bad host: ip \(UInt32(bitPattern: request.ip)), port \(request.port)")
        }
        let ttl = Duration.milliseconds(Int64(request.ttlMs))
        guard ttl <= limits.maxRegistrationTTL else {
            return refuse("ttl \(request.ttlMs) ms is above the limit of \(limits.maxRegistrationTTL)")
        }
        var actions: [Action] = []
        if request.ttlMs == 0 {
            if registrations[key]?.removeValue(forKey: host) != nil {
                if registrations[key]?.isEmpty == true { registrations[key] = nil }
                registrationCount -= 1
                actions.append(.log(.deregistered(key, host)))
                actions += markStale()
            }
        } else if registrations[key]?[host] != nil {
            registrations[key]![host] = now.advanced(by: ttl)
        } else if registrationCount >= limits.maxRegistrations {
            return refuse("the name service holds its limit of \(limits.maxRegistrations) registrations")
        } else {
            registrations[key, default: [:]][host] = now.advanced(by: ttl)
            registrationCount += 1
            actions.append(.log(.registered(key, host, ttlMs: request.ttlMs)))
            actions += markStale()
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
        database = (version, entries)
        reloads += 1
        pendingPushes.formUnion(changed)
        return markStale()
    }

    /// Drops the registrations whose time ran out by `now`.
    mutating func tick(now: ContinuousClock.Instant) -> [Action] {
        var actions: [Action] = []
        for (key, hosts) in registrations {
            for (host, expiry) in hosts where expiry <= now {
                registrations[key]![host] = nil
                registrationCount -= 1
                actions.append(.log(.registrationExpired(key, host)))
            }
            if registrations[key]?.isEmpty == true { registrations[key] = nil }
        }
        if !actions.isEmpty { actions += markStale() }
        return actions
    }

    private mutating func markStale() -> [Action] {
        stale = true
        if rebuildRequested { return [] }
        rebuildRequested = true
        return [.rebuild]
    }

    // MARK: Rebuilding the snapshot

    /// What the next snapshot is built from, or nil when the served one is current. Clears the request: a change
    /// after this gives another ``Action/rebuild``.
    mutating func takeRebuild() -> Rebuild? {
        rebuildRequested = false
        guard stale else { return nil }
        stale = false
        let registered = registrations.flatMap { key, hosts in hosts.keys.map { RouteEntry(key: key, host: $0) } }
        defer { pendingPushes = [] }
        return Rebuild(version: database.version, entries: database.entries + registered, previous: snapshot,
                       pushing: pendingPushes)
    }

    /// Swaps in a snapshot built from `rebuild` and pushes every route whose hosts changed (and those it names) to
    /// their subscribers.
    mutating func install(_ fresh: RouteSnapshot, from rebuild: Rebuild) -> [Action] {
        let changed = rebuild.pushing.union(fresh.changedRoutes(since: snapshot))
        snapshot = fresh
        var actions: [Action] = []
        for key in changed {
            for connection in subscriptions[key] ?? [] {
                actions.append(.push(connection: connection, route: key))
            }
        }
        pushes += actions.count
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
