/// Tunables of a `RouteBalancer`, with the defaults of Lars (PROTOCOL.md, DESIGN.md "Load balancing").
///
/// Rates are fractions (0.1 is 10 %). Durations are measured on the clock the balancer is driven with
/// (`now:` arguments, monotonic nanoseconds).
public struct BalancerSettings: Sendable, Hashable, Codable {
    /// Every `probeNum`-th request goes to an overloaded host (when there is one) as a probe. Default 10.
    public var probeNum: Int
    /// Virtual successes an idle host starts with (and gets back on every reset). Default 180.
    public var initSuccCount: UInt32
    /// Virtual errors an overloaded host starts with. Default 5.
    public var initErrCount: UInt32
    /// An idle host whose virtual error rate goes above this becomes overloaded. Default 0.1.
    public var errRate: Double
    /// An overloaded host whose virtual success rate goes above this becomes idle. Default 0.92.
    public var succRate: Double
    /// An idle host with this many consecutive errors becomes overloaded. Default 10.
    public var continErrLimit: UInt32
    /// An overloaded host with this many consecutive successes becomes idle. Default 10.
    public var continSuccLimit: UInt32
    /// At the end of each idle window, an idle host whose real error rate over the window is above this becomes
    /// overloaded. Default 0.7.
    public var windowErrRate: Double
    /// Length of an idle host's window (its counters are reset at the end of each). Default 15 s.
    public var idleTimeout: Duration
    /// An overloaded host is forced back to idle after this long. Default 15 s.
    public var overloadTimeout: Duration
    /// The agent asks the name service for a module's route again after this long. Default 15 s.
    public var updateTimeout: Duration

    public init(
        probeNum: Int = 10,
        initSuccCount: UInt32 = 180,
        initErrCount: UInt32 = 5,
        errRate: Double = 0.1,
        succRate: Double = 0.92,
        continErrLimit: UInt32 = 10,
        continSuccLimit: UInt32 = 10,
        windowErrRate: Double = 0.7,
        idleTimeout: Duration = .seconds(15),
        overloadTimeout: Duration = .seconds(15),
        updateTimeout: Duration = .seconds(15)
    ) {
        self.probeNum = probeNum
        self.initSuccCount = initSuccCount
        self.initErrCount = initErrCount
        self.errRate = errRate
        self.succRate = succRate
        self.continErrLimit = continErrLimit
        self.continSuccLimit = continSuccLimit
        self.windowErrRate = windowErrRate
        self.idleTimeout = idleTimeout
        self.overloadTimeout = overloadTimeout
        self.updateTimeout = updateTimeout
    }

    /// Throws the first setting that makes the balancer unusable.
    public func validate() throws(BalancerSettingsError) {
        if probeNum < 1 { throw .probeNumBelowOne(probeNum) }
        for (name, rate) in [("err_rate", errRate), ("succ_rate", succRate), ("window_err_rate", windowErrRate)]
        where !(0...1).contains(rate) {
            throw .rateOutOfRange(name: name, rate)
        }
        if continErrLimit < 1 { throw .limitBelowOne(name: "contin_err_limit") }
        if continSuccLimit < 1 { throw .limitBelowOne(name: "contin_succ_limit") }
        for (name, d) in [("idle_timeout", idleTimeout), ("overload_timeout", overloadTimeout),
                          ("update_timeout", updateTimeout)] where d <= .zero {
            throw .durationNotPositive(name: name, d)
        }
    }
}

/// Why `BalancerSettings.validate()` refused the settings (settings named as in Lars's configuration).
public enum BalancerSettingsError: Error, Hashable, Sendable, CustomStringConvertible {
    /// `probe_num` is below 1 (every n-th request probes, so n must be at least 1).
    case probeNumBelowOne(Int)
    /// A rate (`err_rate`, `succ_rate`, `window_err_rate`) is outside 0...1.
    case rateOutOfRange(name: String, Double)
    /// A consecutive-call limit (`contin_err_limit`, `contin_succ_limit`) is 0.
    case limitBelowOne(name: String)
    /// A duration (`idle_timeout`, `overload_timeout`, `update_timeout`) is zero or negative.
    case durationNotPositive(name: String, Duration)

    public var description: String {
        switch self {
        case .probeNumBelowOne(let n): return "probe_num must be at least 1, got \(n)"
        case .rateOutOfRange(let name, let rate): return "\(name) must be 0...1, got \(rate)"
        case .limitBelowOne(let name): return "\(name) must be at least 1"
        case .durationNotPositive(let name, let d): return "\(name) must be positive, got \(d)"
        }
    }
}
