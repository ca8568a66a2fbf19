import LarsProtocol
import LoadBalancing
import RouteStore

/// The core's vocabulary: what it asks the shell to do and log, its limits, and the registrations as the database
/// holds them.
extension NameServiceCore {
    /// What the shell does.
    enum Action: Equatable {
        /// Send this frame to the connection now (a reply, encoded at the moment of the request).
        case send(connection: UInt64, id: MessageID, body: [UInt8])
        /// Send the route to the connection as it is served when the push is performed.
        case push(connection: UInt64, route: RouteKey)
        /// The database snapshot is behind the database: rebuild it (``takeRebuild()``, then
        /// ``install(_:from:)``), off the loops. Given once until the rebuild is taken.
        case rebuild
        /// Ask the parent name service for the route (``Limits/hasParent``), with this hop count. Sent when
        /// connected; ``parentConnected()`` asks again for every route.
        case askParent(RouteKey, hops: UInt32)
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
        /// A registered host became full, or has room again (nil load: it stopped reporting one).
        case loadChanged(RouteKey, Host, load: HostLoad?)
        /// Registrations are refused for `kind`: once per episode of that kind (the first refusal after
        /// ``RegistrationRefusal/quiet`` without one).
        case registrationRefused(connection: UInt64, kind: RefusalKind, reason: String)
        case registrationExpired(RouteKey, Host)
        /// A host registered through another replica (read from the database) is served here too.
        case registeredElsewhere(RouteKey, Host)
        /// A route has more hosts than fit in one Lars frame: it is answered with the first `sent` (once per route,
        /// until it fits again).
        case routeTruncated(RouteKey, hostCount: Int, sent: Int)
        /// A route is not asked of the parent: the request came through `hops` name services already (a chain
        /// longer than the limit, or parents in a loop), or the parent's routes held reached their limit. Once per
        /// route.
        case notAskedOfParent(RouteKey, hops: UInt32)
    }

    /// Why a registration is refused.
    enum RefusalKind: Int, Equatable, CaseIterable {
        case badHost, ttlTooLong, badWeight, globalLimit, sourceLimit, routeLimit, badToken
    }

    /// The inputs of one database snapshot build, taken under the lock and built outside it.
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
        var maxRegistrationsPerSource: Int
        var maxRegistrationsPerRoute: Int
        var maxRegistrationTTL: Duration
        /// How much longer than its row says a registration learned from the database is served: the time its
        /// refresh may take to reach this replica (another replica's write interval and this one's poll).
        var remoteGrace: Duration
        /// Routes with no rows or registrations here are asked of a parent name service.
        var hasParent: Bool
        /// The most name services a route request passes through (``NameServiceConfiguration/maxChainHops``).
        var maxChainHops: Int
        /// The most routes asked of the parent and held (each one subscribed there).
        var maxParentRoutes: Int

        init(_ configuration: NameServiceConfiguration) {
            maxSubscriptionsPerConnection = configuration.maxSubscriptionsPerConnection
            maxRegistrations = configuration.maxRegistrations
            maxRegistrationsPerSource = configuration.maxRegistrationsPerSource
            maxRegistrationsPerRoute = configuration.maxRegistrationsPerRoute
            maxRegistrationTTL = configuration.maxRegistrationTTL
            remoteGrace = configuration.registrationSyncInterval + configuration.pollInterval + .seconds(1)
            hasParent = configuration.parent != nil
            maxChainHops = configuration.maxChainHops
            maxParentRoutes = configuration.maxSubscriptionsPerConnection
        }
    }

    /// A registration's identity: its route and host (the database row's key).
    struct RegistrationID: Hashable {
        var key: RouteKey
        var host: Host
    }

    /// A HostRegistration row: a registration as the database holds it, with its expiry on this process's clock
    /// (the shell converts to and from the row's wall-clock milliseconds), or a tombstone: the host was taken back.
    struct StoredRegistration: Equatable {
        var id: RegistrationID
        var expiry: ContinuousClock.Instant
        var source: UInt32
        var load: HostLoad?
        var weight: UInt32 = HostWeight.standard
        var takenBack = false
    }

    /// The registration changes made through this replica since the last ``takeWrites(now:)``: rows to write
    /// (upserts; a taken-back host is a tombstone row). Written in order, one batch at a time.
    struct RegistrationWrites: Equatable {
        var rows: [StoredRegistration]
        var epoch: Int
    }
}
