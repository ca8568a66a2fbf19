/// Whether a host is in the idle list (served round robin) or the overload list (probed only).
public enum HostHealth: String, Sendable, Hashable, Codable {
    case idle
    case overloaded
}

/// A host's state inside a `RouteBalancer`: its list and counters (for tests, the demo and reports).
public struct HostStatus: Sendable, Hashable {
    public var health: HostHealth
    /// Virtual successes: seeded with `initSuccCount` when the host becomes idle, 0 when it becomes overloaded.
    public var virtualSuccesses: UInt32
    /// Virtual errors: 0 when the host becomes idle, seeded with `initErrCount` when it becomes overloaded.
    public var virtualErrors: UInt32
    /// Real successes and errors since the host's current window (idle) or overload period began.
    public var realSuccesses: UInt32
    public var realErrors: UInt32
    public var consecutiveSuccesses: UInt32
    public var consecutiveErrors: UInt32
    /// When the host's current idle window began, or when it became overloaded (clock of the balancer, ns).
    public var since: UInt64
    /// Times `pick` returned this host (probes included) since it joined the route.
    public var picks: UInt64

    init(idleAt now: UInt64, settings: BalancerSettings, picks: UInt64 = 0) {
        health = .idle
        virtualSuccesses = settings.initSuccCount
        virtualErrors = 0
        realSuccesses = 0
        realErrors = 0
        consecutiveSuccesses = 0
        consecutiveErrors = 0
        since = now
        self.picks = picks
    }

    mutating func becomeIdle(at now: UInt64, settings: BalancerSettings) {
        self = HostStatus(idleAt: now, settings: settings, picks: picks)
    }

    mutating func becomeOverloaded(at now: UInt64, settings: BalancerSettings) {
        health = .overloaded
        virtualSuccesses = 0
        virtualErrors = settings.initErrCount
        realSuccesses = 0
        realErrors = 0
        consecutiveSuccesses = 0
        consecutiveErrors = 0
        since = now
    }

    var virtualErrorRate: Double {
        let total = Double(virtualSuccesses) + Double(virtualErrors)
        return total == 0 ? 0 : Double(virtualErrors) / total
    }

    var virtualSuccessRate: Double {
        let total = Double(virtualSuccesses) + Double(virtualErrors)
        return total == 0 ? 0 : Double(virtualSuccesses) / total
    }

    var realErrorRate: Double {
        let total = Double(realSuccesses) + Double(realErrors)
        return total == 0 ? 0 : Double(realErrors) / total
    }
}

/// One host's line of a report, for the reporter (`ReportStatusRequest.results`, `HostCallResult`): its running
/// counts in its current window, and whether it is overloaded.
public struct HostCallSummary: Sendable, Hashable {
    public var host: Host
    /// Successes and errors since the host's current window began (it became idle, or overloaded).
    public var successes: UInt32
    public var errors: UInt32
    /// True when the host is in the overload list at the time of the summary.
    public var overloaded: Bool

    public init(host: Host, successes: UInt32, errors: UInt32, overloaded: Bool) {
        self.host = host
        self.successes = successes
        self.errors = errors
        self.overloaded = overloaded
    }
}
