import Reactor

/// Settings of a ``NameService``.
public struct NameServiceConfiguration: Sendable {
    /// Address to bind (default 127.0.0.1).
    public var host: String
    /// Port to bind (default 7778, PROTOCOL.md); 0 lets the kernel pick (read it back from `start()`).
    public var port: Int
    /// How often RouteVersion is read; a changed version reloads the routes and pushes the changed ones.
    public var pollInterval: Duration
    /// How often the routes are reloaded even when RouteVersion did not change.
    public var fullReloadInterval: Duration
    /// Most agent connections at once; more are refused.
    public var maxConnections: Int
    /// The longest time to live a self-registered host may ask for (message id 102); longer is refused.
    public var maxRegistrationTTL: Duration
    /// Most self-registered hosts at once; further registrations are refused (default 100,000).
    public var maxRegistrations: Int
    /// Most self-registered hosts one source address holds (the connection's IP, whatever its port); further ones
    /// from it are refused, so one peer cannot fill the table for everyone (default 1,000).
    public var maxRegistrationsPerSource: Int
    /// Most self-registered hosts of one route; further ones are refused (default 1,000; a Lars frame carries about
    /// 3,800 hosts at most).
    public var maxRegistrationsPerRoute: Int
    /// Most routes one connection is subscribed to (pushed on change); further routes are answered but not
    /// pushed, so made-up module ids cannot grow the table without bound.
    public var maxSubscriptionsPerConnection: Int
    /// RouteChange rows are deleted once their version was seen this long ago (``RouteChangeRetention``), so the
    /// table does not grow for ever; nil keeps them. Default 1 hour: any other name service on the database polls
    /// far more often than that.
    public var routeChangeRetention: Duration?
    /// Whether self-registrations are kept in the database (HostRegistration, beside Lars's tables), so that every
    /// name service on it (replicas) serves and pushes them, and a server that moves to another replica keeps its
    /// registration (default true). False keeps them in this process only, as before.
    public var registrationsInDatabase: Bool = true
    /// How often the registrations changed through this replica are written (one transaction per batch; a
    /// heartbeat burst is one row per host). A registration made through another replica is served here
    /// about `registrationSyncInterval + pollInterval` after it was made, and that much past its expiry.
    public var registrationSyncInterval: Duration = .milliseconds(250)
    /// A parent name service (regional name services): routes this one has no rows or registrations for are asked
    /// of it (id 110), held, served and pushed down when it pushes; this one's own rows win. Its alternates are
    /// tried in turn when it is lost or silent. While it is away the routes held are served. Nil: none (Lars).
    public var parent: ClientEndpoint?
    /// Further addresses of the parent (its replicas).
    public var parentAlternates: [ClientEndpoint] = []
    /// The most name services a route request passes through, this one included (default 8): a longer chain, or
    /// parents in a loop, stops there and is answered with what is held (logged once per route).
    public var maxChainHops: Int = 8
    /// How long the state relay's changes are kept (StateChange rows), so a subscriber that comes back within it
    /// gets what it missed (default 10 minutes).
    public var stateRetention: Duration = .seconds(600)
    /// The largest payload a state change may carry (default 64 KiB, at most 1 MiB: a frame's body is at most 4 MiB);
    /// larger publishes are refused with a reason.
    public var stateMaxPayload: Int = 64 * 1024
    /// Payload bytes of publishes waiting for the database, all publishers together (default 16 MiB): beyond it
    /// publishes are refused with a reason and counted, one log line per episode.
    public var stateMaxPendingBytes: Int = 16 << 20
    /// A subscriber whose unsent output passes this many bytes is closed, not waited for (default 4 MiB); it catches
    /// up within the retention when it reconnects.
    public var stateMaxSubscriberQueue: Int = 4 << 20
    /// Owner tokens by module, beside the database's ModuleToken rows (these win): a module with a token takes
    /// registrations and deregistrations (id 102) only with it (`switchyard names --tokens FILE`).
    public var moduleTokens: [Int32: String] = [:]

    /// Creates a configuration; every setting has the default of PROTOCOL.md and DESIGN.md.
    public init(host: String = "127.0.0.1", port: Int = 7778, pollInterval: Duration = .seconds(1),
                fullReloadInterval: Duration = .seconds(10), maxConnections: Int = 100_000,
                maxRegistrationTTL: Duration = .seconds(3600), maxRegistrations: Int = 100_000,
                maxSubscriptionsPerConnection: Int = 100_000, maxRegistrationsPerSource: Int = 1000,
                maxRegistrationsPerRoute: Int = 1000, routeChangeRetention: Duration? = .seconds(3600)) {
        self.host = host
        self.port = port
        self.pollInterval = pollInterval
        self.fullReloadInterval = fullReloadInterval
        self.maxConnections = maxConnections
        self.maxRegistrationTTL = maxRegistrationTTL
        self.maxRegistrations = maxRegistrations
        self.maxSubscriptionsPerConnection = maxSubscriptionsPerConnection
        self.maxRegistrationsPerSource = maxRegistrationsPerSource
        self.maxRegistrationsPerRoute = maxRegistrationsPerRoute
        self.routeChangeRetention = routeChangeRetention
    }

    /// Throws ``NameServiceError/invalidConfiguration(_:)`` naming the first setting out of range.
    public func validate() throws {
        func check(_ ok: Bool, _ message: @autoclosure () -> String) throws {
            if !ok { throw NameServiceError.invalidConfiguration(message()) }
        }
        try check(!host.isEmpty, "host must not be empty")
        try check((0...65535).contains(port), "port must be 0...65535, got \(port)")
        try check(pollInterval > .zero, "pollInterval must be positive, got \(pollInterval)")
        try check(fullReloadInterval > .zero, "fullReloadInterval must be positive, got \(fullReloadInterval)")
        try check(maxConnections >= 1, "maxConnections must be at least 1, got \(maxConnections)")
        try check(maxRegistrationTTL >= .zero, "maxRegistrationTTL must not be negative, got \(maxRegistrationTTL)")
        try check(maxRegistrations >= 0, "maxRegistrations must not be negative, got \(maxRegistrations)")
        try check(maxRegistrationsPerSource >= 0,
                  "maxRegistrationsPerSource must not be negative, got \(maxRegistrationsPerSource)")
        try check(maxRegistrationsPerRoute >= 0,
                  "maxRegistrationsPerRoute must not be negative, got \(maxRegistrationsPerRoute)")
        try check(routeChangeRetention.map { $0 > .zero } ?? true,
                  "routeChangeRetention must be positive (nil keeps the rows), got \(routeChangeRetention!)")
        try check(stateRetention > .zero, "stateRetention must be positive, got \(stateRetention)")
        try check((1...(1 << 20)).contains(stateMaxPayload),
                  "stateMaxPayload must be 1...1 MiB, got \(stateMaxPayload)")
        try check(stateMaxPendingBytes >= stateMaxPayload,
                  "stateMaxPendingBytes must be at least stateMaxPayload, got \(stateMaxPendingBytes)")
        try check(stateMaxSubscriberQueue >= stateMaxPayload,
                  "stateMaxSubscriberQueue must be at least stateMaxPayload, got \(stateMaxSubscriberQueue)")
        try check((1...64).contains(maxChainHops), "maxChainHops must be 1...64, got \(maxChainHops)")
        try check(registrationSyncInterval > .zero,
                  "registrationSyncInterval must be positive, got \(registrationSyncInterval)")
        try check(maxSubscriptionsPerConnection >= 0,
                  "maxSubscriptionsPerConnection must not be negative, got \(maxSubscriptionsPerConnection)")
    }
}

/// A snapshot of a name service's counters.
public struct NameServiceStatistics: Sendable, Hashable {
    /// GetRouteRequests answered.
    public var requests: Int
    /// GetRouteResponses pushed to subscribers after a change.
    public var pushes: Int
    /// Times the routes were loaded from the database.
    public var reloads: Int
    /// Database polls that failed.
    public var failedPolls: Int
    /// The RouteVersion of the snapshot served (-1 before the first load).
    public var version: Int64
    /// (route, connection) subscriptions.
    public var subscriptions: Int
    /// False while the database is unreachable (the last snapshot is served).
    public var databaseReachable: Bool
    /// Live self-registrations.
    public var registrations: Int = 0
    /// Registrations refused (a bad host or ttl, or a global, per-source or per-route limit).
    public var registrationsRefused: Int = 0
    /// Routes found with more hosts than fit in one frame (answered with those that fit).
    public var routesTruncated: Int = 0
    /// RouteChange rows deleted past ``NameServiceConfiguration/routeChangeRetention``.
    public var routeChangesPruned: Int = 0
    /// State changes published through this name service (written to StateChange).
    public var stateChangesPublished: Int = 0
    /// State changes sent to subscribers of this name service.
    public var stateChangesDelivered: Int = 0
    /// Publishes refused (payload too large, too many waiting for the database).
    public var stateChangesRefused: Int = 0
    /// Subscribers closed because they did not read (their unsent output passed 4 MiB).
    public var stateSubscribersClosed: Int = 0
    /// The state relay has read where the changes stand (it delivers what is published from then on).
    public var stateRelayReady: Bool = false
}
