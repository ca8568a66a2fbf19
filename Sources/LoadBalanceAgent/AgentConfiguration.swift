#if canImport(Glibc)
import Glibc
#endif
import LoadBalancing
import Reactor
import SwitchyardCore

/// Configuration of a `LoadBalanceAgent`, with the defaults of PROTOCOL.md.
public struct AgentConfiguration: Sendable {
    /// Address the three UDP ports bind to.
    public var host: String
    /// The UDP ports (0: the kernel picks). A client sends a request for (modid, cmdid) to
    /// `ports[(modid + cmdid) % ports.count]`. Default 8888, 8889, 8890.
    public var ports: [Int]
    /// The name service (TCP), asked for routes. Default 127.0.0.1:7778.
    public var nameServiceHost: String
    public var nameServicePort: Int
    /// The reporter (TCP), sent aggregated call results. Default 127.0.0.1:7779.
    public var reporterHost: String
    public var reporterPort: Int
    /// Further name services on the same database (replicas), tried in turn when the current one is lost, does not
    /// answer a connect, or stays silent past `upstreamSilenceTimeout`; GetHost is answered from the routes held
    /// meanwhile. Lars key and flag: `names = a:7778,b:7778` (the first is `nameServiceHost:Port`).
    public var nameServiceAlternates: [ClientEndpoint] = []
    /// Further reporters, as `nameServiceAlternates` (`reporter = a:7779,b:7779`).
    public var reporterAlternates: [ClientEndpoint] = []
    /// The name service and its alternates, in the order they are tried.
    public var nameServiceEndpoints: [ClientEndpoint] {
        [ClientEndpoint(host: nameServiceHost, port: nameServicePort)] + nameServiceAlternates
    }
    /// The reporter and its alternates, in the order they are tried.
    public var reporterEndpoints: [ClientEndpoint] {
        [ClientEndpoint(host: reporterHost, port: reporterPort)] + reporterAlternates
    }
    /// The name service and the reporter get a heartbeat after this long without traffic; with
    /// `upstreamSilenceTimeout`, one that answers nothing for that long is left for the next address. Default 1 s.
    public var upstreamHeartbeatInterval: Duration = .seconds(1)
    /// Applies only with alternates (a single server is waited for). Nil: a silent name service or reporter is
    /// waited for (Lars's do not answer heartbeats; a lost connection still fails over). Default 3 s.
    public var upstreamSilenceTimeout: Duration? = .seconds(3)
    /// Reports are aggregated per module and sent at most once per interval. Default 1 s.
    public var reportInterval: Duration
    /// The `caller` field of reports: the reporter keeps one row per (host, caller). Lars's meaning: the agent
    /// machine's IPv4 address, a number in reading order (sent as the bits of the int32 field, stored unsigned).
    /// Default: the primary IPv4 address (`LocalAddresses.primaryIPv4()`: the default route's interface), else
    /// 127.0.0.1.
    public var caller: UInt32
    /// When set, routes are saved to this file and loaded at start, so a restarted agent serves while the name
    /// service is down. Only modules with hosts are saved (at most `maxModules`).
    public var routeCacheFile: String?
    /// The route cache file is written at most once per this interval, off the agent's loop, as one snapshot, and
    /// only when a route with hosts changed since the last write (a dirty flag: a burst of changes is one write).
    /// Default 5 s.
    public var routeCacheInterval: Duration
    /// Shutdown waits at most this long for the last route cache write; past it the agent stops anyway (the file
    /// keeps its previous contents: writes are atomic). Default 2 s.
    public var routeCacheShutdownTimeout: Duration
    /// Requests for modules the agent has no entry for (each makes it ask the name service) are limited per source
    /// address by a token bucket refilled at this many per second. Default 100/s.
    public var unknownModuleRate: Double
    /// The bucket's size: a source may ask for this many unknown modules at once. Past it such a request is
    /// answered NOEXIST without asking the name service, and counted (`unknownModulesThrottled`). Default 200.
    public var unknownModuleBurst: Int
    /// Most sources whose buckets are kept; past it buckets refilled to full are dropped, and sources beyond still
    /// share one bucket. Default 4,096.
    public var maxRateLimitedSources: Int
    /// Which source addresses the UDP ports answer; others are dropped and counted (`remoteDatagramsDropped`).
    /// Default `.loopback` (127.0.0.0/8): only local callers, so nobody elsewhere can forge failure reports.
    public var allowedSources: AgentSourceFilter
    /// When set, a ReportRequest (id 6) must carry this secret (`ReportSecret`: protobuf field 15 appended to the
    /// body) or it is dropped and counted (`reportsRejected`). Default nil: no secret (Lars clients send none).
    public var reportSecret: String?
    /// A module whose route request got no answer is asked again after this long. Default 1 s.
    public var routeRetryInterval: Duration
    /// First and largest delay between reconnects to the name service and the reporter.
    public var initialBackoff: Duration
    public var maxBackoff: Duration
    /// The balancers' settings (update_timeout: how often a module's route is asked again).
    public var balancer: BalancerSettings
    /// A module without hosts (one the name service does not know) that no request asked for within this long is
    /// forgotten, so made-up module ids do not pile up. Default 60 s.
    public var emptyModuleTimeout: Duration
    /// Most modules kept. When full, a new module evicts the oldest module that never had hosts (counted in
    /// `modulesEvicted`); when every module has hosts, the request is answered NOEXIST (`newModulesRefused`).
    /// Default 100,000.
    public var maxModules: Int
    /// How long the agent's loop polls without sleeping after a request (`LoopConfiguration.busyPoll` of the loop
    /// that runs the agent; `switchyard agent` passes it). A caller's next request then finds the loop awake
    /// instead of paying a thread wake-up; the price is at most this much CPU per request. Default 50 µs; zero
    /// turns it off.
    public var busyPoll: Duration
    /// Most services one batch GetHost (id 104) may ask for; a batch with more (or with none) is answered with
    /// retcode 2 and a reason, not served (counted in `batchesRefused`). Default 32; at most
    /// ``AgentConfiguration/maxBatchItemsLimit``, so every reply fits in one datagram.
    public var maxBatchItems: Int
    /// The largest `maxBatchItems`: 512 answers of at most 50 bytes each (a GetHostResponse with ten-byte negative
    /// ids) are about 25 KiB, well inside a datagram's 65,499-byte body.
    public static let maxBatchItemsLimit = 512

    public init(
        host: String = "127.0.0.1",
        ports: [Int] = [8888, 8889, 8890],
        nameServiceHost: String = "127.0.0.1",
        nameServicePort: Int = 7778,
        reporterHost: String = "127.0.0.1",
        reporterPort: Int = 7779,
        reportInterval: Duration = .seconds(1),
        caller: UInt32 = AgentConfiguration.defaultCaller,
        routeCacheFile: String? = nil,
        routeRetryInterval: Duration = .seconds(1),
        initialBackoff: Duration = .milliseconds(100),
        maxBackoff: Duration = .seconds(5),
        balancer: BalancerSettings = BalancerSettings(),
        busyPoll: Duration = .microseconds(50),
        emptyModuleTimeout: Duration = .seconds(60),
        maxModules: Int = 100_000,
        routeCacheInterval: Duration = .seconds(5),
        routeCacheShutdownTimeout: Duration = .seconds(2),
        unknownModuleRate: Double = 100,
        unknownModuleBurst: Int = 200,
        maxRateLimitedSources: Int = 4096,
        allowedSources: AgentSourceFilter = .loopback,
        reportSecret: String? = nil,
        maxBatchItems: Int = 32
    ) {
        self.host = host
        self.ports = ports
        self.nameServiceHost = nameServiceHost
        self.nameServicePort = nameServicePort
        self.reporterHost = reporterHost
        self.reporterPort = reporterPort
        self.reportInterval = reportInterval
        self.caller = caller
        self.routeCacheFile = routeCacheFile
        self.routeRetryInterval = routeRetryInterval
        self.initialBackoff = initialBackoff
        self.maxBackoff = maxBackoff
        self.balancer = balancer
        self.busyPoll = busyPoll
        self.emptyModuleTimeout = emptyModuleTimeout
        self.maxModules = maxModules
        self.routeCacheInterval = routeCacheInterval
        self.routeCacheShutdownTimeout = routeCacheShutdownTimeout
        self.unknownModuleRate = unknownModuleRate
        self.unknownModuleBurst = unknownModuleBurst
        self.maxRateLimitedSources = maxRateLimitedSources
        self.allowedSources = allowedSources
        self.reportSecret = reportSecret
        self.maxBatchItems = maxBatchItems
    }

    /// The machine's primary IPv4 address, else 127.0.0.1 (looked up once).
    public static let defaultCaller: UInt32 = LocalAddresses.primaryIPv4() ?? 0x7F00_0001

    /// True when `host` binds every address (0.0.0.0, Lars's agent): callers from other machines can reach the
    /// ports, and with `allowedSources` `.any` the agent trusts everyone on its network with reports.
    public var bindsEveryAddress: Bool { host == "0.0.0.0" }

    /// Throws the first setting that makes the configuration unusable. `LoadBalanceAgent.start()` calls it; the
    /// command line calls it while it parses its flags.
    public func validate() throws(AgentConfigurationError) {
        do {
            try balancer.validate()
        } catch {
            throw .balancer(error)
        }
        if ports.isEmpty { throw .noPorts }
        for p in ports where !(0...65535).contains(p) { throw .portOutOfRange(p) }
        if !(1...65535).contains(nameServicePort) { throw .nameServicePortOutOfRange(nameServicePort) }
        if !(1...65535).contains(reporterPort) { throw .reporterPortOutOfRange(reporterPort) }
        if reportInterval <= .zero { throw .reportIntervalNotPositive }
        if emptyModuleTimeout <= .zero { throw .emptyModuleTimeoutNotPositive }
        if maxModules < 1 { throw .maxModulesBelowOne(maxModules) }
        if busyPoll < .zero || busyPoll > .seconds(1) { throw .busyPollOutOfRange(busyPoll) }
        if routeCacheInterval <= .zero { throw .routeCacheIntervalNotPositive }
        if routeCacheShutdownTimeout < .zero { throw .routeCacheShutdownTimeoutNegative }
        if !(unknownModuleRate > 0) || !unknownModuleRate.isFinite { throw .unknownModuleRateNotPositive }
        if unknownModuleBurst < 1 { throw .unknownModuleBurstBelowOne(unknownModuleBurst) }
        if maxRateLimitedSources < 1 { throw .maxRateLimitedSourcesBelowOne(maxRateLimitedSources) }
        if case .network(_, let prefix) = allowedSources, !(0...32).contains(prefix) {
            throw .sourcePrefixOutOfRange(prefix)
        }
        if let reportSecret, reportSecret.isEmpty { throw .emptyReportSecret }
        if !(1...Self.maxBatchItemsLimit).contains(maxBatchItems) { throw .maxBatchItemsOutOfRange(maxBatchItems) }
    }
}

/// Why a configuration is refused: a line of a configuration file, or a setting `validate()` rejects.
public enum AgentConfigurationError: Error, Equatable, Sendable, CustomStringConvertible {
    /// A line is not `key = value`, or its key is unknown, or its value does not parse.
    case badLine(line: Int, text: String, reason: String)
    /// A balancer setting is out of range.
    case balancer(BalancerSettingsError)
    /// `ports` is empty: the agent needs at least one UDP port.
    case noPorts
    /// An agent port is outside 0...65535.
    case portOutOfRange(Int)
    /// The name service port is outside 1...65535.
    case nameServicePortOutOfRange(Int)
    /// The reporter port is outside 1...65535.
    case reporterPortOutOfRange(Int)
    /// `reportInterval` is zero or negative.
    case reportIntervalNotPositive
    /// `emptyModuleTimeout` is zero or negative.
    case emptyModuleTimeoutNotPositive
    /// `maxModules` is below 1.
    case maxModulesBelowOne(Int)
    /// `busyPoll` is outside 0...1 s.
    case busyPollOutOfRange(Duration)
    /// `routeCacheInterval` is zero or negative.
    case routeCacheIntervalNotPositive
    /// `routeCacheShutdownTimeout` is negative.
    case routeCacheShutdownTimeoutNegative
    /// `unknownModuleRate` is not a positive number.
    case unknownModuleRateNotPositive
    /// `unknownModuleBurst` is below 1.
    case unknownModuleBurstBelowOne(Int)
    /// `maxRateLimitedSources` is below 1.
    case maxRateLimitedSourcesBelowOne(Int)
    /// The prefix length of `allowedSources` is outside 0...32.
    case sourcePrefixOutOfRange(Int)
    /// `reportSecret` is the empty string (use nil for none).
    case emptyReportSecret
    /// `maxBatchItems` is outside 1...``AgentConfiguration/maxBatchItemsLimit``.
    case maxBatchItemsOutOfRange(Int)

    public var description: String {
        switch self {
        case .badLine(let line, let text, let reason): return "line \(line) '\(text)': \(reason)"
        case .balancer(let error): return error.description
        case .noPorts: return "at least one agent port is needed"
        case .portOutOfRange(let p): return "port \(p) is not 0...65535"
        case .nameServicePortOutOfRange(let p): return "name service port \(p) is not 1...65535"
        case .reporterPortOutOfRange(let p): return "reporter port \(p) is not 1...65535"
        case .reportIntervalNotPositive: return "report interval must be positive"
        case .emptyModuleTimeoutNotPositive: return "empty module timeout must be positive"
        case .maxModulesBelowOne: return "max modules must be at least 1"
        case .busyPollOutOfRange: return "busy poll must be 0...1 s"
        case .routeCacheIntervalNotPositive: return "route cache interval must be positive"
        case .routeCacheShutdownTimeoutNegative: return "route cache shutdown timeout must not be negative"
        case .unknownModuleRateNotPositive: return "unknown module rate must be positive"
        case .unknownModuleBurstBelowOne: return "unknown module burst must be at least 1"
        case .maxRateLimitedSourcesBelowOne: return "max rate-limited sources must be at least 1"
        case .sourcePrefixOutOfRange(let p): return "source prefix length \(p) is not 0...32"
        case .emptyReportSecret: return "the report secret must not be empty"
        case .maxBatchItemsOutOfRange(let n):
            return "max batch items must be 1...\(AgentConfiguration.maxBatchItemsLimit), got \(n)"
        }
    }
}

extension AgentConfiguration {
    /// The keys of a configuration file (Lars's names for the balancer settings).
    public static let fileKeys = [
        "host", "ports", "names", "reporter", "report_interval_ms", "caller", "route_cache",
        "probe_num", "init_succ_cnt", "init_err_cnt", "err_rate", "succ_rate", "contin_err_limit",
        "contin_succ_limit", "window_err_rate", "idle_timeout", "overload_timeout", "update_timeout",
        "busy_poll_us", "empty_module_timeout", "max_modules", "route_cache_interval", "unknown_module_rate",
        "unknown_module_burst", "allow_remote", "report_secret", "max_batch",
    ]

    /// Applies a configuration file: `key = value` lines, `#` comments, blank lines ignored. Durations
    /// (`idle_timeout`, `overload_timeout`, `update_timeout`) are seconds; `names` and `reporter` are HOST:PORT;
    /// `ports` is a comma-separated list.
    public mutating func apply(configurationText text: String) throws(AgentConfigurationError) {
        for (index, rawLine) in text.split(separator: "\n", omittingEmptySubsequences: false).enumerated() {
            var line = Substring(rawLine)
            if let hash = line.firstIndex(of: "#") { line = line[..<hash] }
            let trimmed = line.trimmingWhitespace
            if trimmed.isEmpty { continue }
            guard let eq = trimmed.firstIndex(of: "=") else {
                throw .badLine(line: index + 1, text: trimmed, reason: "expected key = value")
            }
            let key = String(trimmed[..<eq]).trimmingWhitespace
            let value = String(trimmed[trimmed.index(after: eq)...]).trimmingWhitespace
            if let reason = apply(key: key, value: value) {
                throw .badLine(line: index + 1, text: trimmed, reason: reason)
            }
        }
    }

    /// Sets `keyPath` to `value`; returns `expected` when there is none (the text did not parse or was out of range).
    private mutating func set<T>(_ keyPath: WritableKeyPath<Self, T>, _ value: T?, else expected: String) -> String? {
        guard let value else { return expected }
        self[keyPath: keyPath] = value
        return nil
    }

    /// Applies one setting; returns why it failed, nil when it was applied.
    public mutating func apply(key: String, value: String) -> String? {
        func int<T: FixedWidthInteger>(_: T.Type, atLeast least: T = .min) -> T? {
            T(value).flatMap { $0 >= least ? $0 : nil }
        }
        func rate() -> Double? { Double(value).flatMap { (0...1).contains($0) ? $0 : nil } }
        func seconds() -> Duration? { Double(value).flatMap { $0 > 0 ? .milliseconds(Int64($0 * 1000)) : nil } }
        switch key {
        case "host": host = value
        case "ports":
            let list = value.split(separator: ",").map { Int($0.trimmingWhitespace) }
            guard !list.isEmpty, list.allSatisfy({ $0 != nil }) else { return "expected ports like 8888,8889,8890" }
            ports = list.map { $0! }
        case "names", "reporter":
            guard let list = ClientEndpoint.list(String(value)) else {
                return "expected HOST:PORT, or several comma-separated (replicas, tried in turn)"
            }
            if key == "names" {
                nameServiceHost = list[0].host; nameServicePort = list[0].port
                nameServiceAlternates = Array(list.dropFirst())
            } else {
                reporterHost = list[0].host; reporterPort = list[0].port
                reporterAlternates = Array(list.dropFirst())
            }
        case "upstream_silence_ms":
            guard let v = int(Int64.self), v >= 0 else { return "expected milliseconds (0: wait for a silent one)" }
            upstreamSilenceTimeout = v == 0 ? nil : .milliseconds(v)
        case "report_interval_ms":
            guard let v = int(Int64.self), v > 0 else { return "expected a positive number of milliseconds" }
            reportInterval = .milliseconds(v)
        case "caller":
            guard let v = IPv4Endpoint.parseIPv4(value) ?? UInt32(value) else {
                return "expected an IPv4 address (a.b.c.d) or a number 0...4294967295"
            }
            caller = v
        case "route_cache": routeCacheFile = value.isEmpty ? nil : value
        case "empty_module_timeout": return set(\.emptyModuleTimeout, seconds(), else: "expected positive seconds")
        case "max_modules": return set(\.maxModules, int(Int.self, atLeast: 1), else: "expected an integer >= 1")
        case "max_batch":
            guard let v = int(Int.self), (1...Self.maxBatchItemsLimit).contains(v) else {
                return "expected an integer 1...\(Self.maxBatchItemsLimit)"
            }
            maxBatchItems = v
        case "route_cache_interval": return set(\.routeCacheInterval, seconds(), else: "expected positive seconds")
        case "unknown_module_rate":
            let rate = Double(value).flatMap { $0 > 0 && $0.isFinite ? $0 : nil }
            return set(\.unknownModuleRate, rate, else: "expected a positive rate per second")
        case "unknown_module_burst":
            return set(\.unknownModuleBurst, int(Int.self, atLeast: 1),
                       else: "expected an integer >= 1")
        case "allow_remote":
            switch value {
            case "true", "yes", "1": allowedSources = .any
            case "false", "no", "0": allowedSources = .loopback
            default: return "expected true or false"
            }
        case "report_secret": reportSecret = value.isEmpty ? nil : value
        case "busy_poll_us":
            guard let v = int(Int64.self), (0...1_000_000).contains(v) else {
                return "expected microseconds 0...1000000"
            }
            busyPoll = .microseconds(v)
        case "probe_num": return set(\.balancer.probeNum, int(Int.self, atLeast: 1), else: "expected an integer >= 1")
        case "init_succ_cnt": return set(\.balancer.initSuccCount, int(UInt32.self), else: "expected a count")
        case "init_err_cnt": return set(\.balancer.initErrCount, int(UInt32.self), else: "expected a count")
        case "contin_err_limit":
            return set(\.balancer.continErrLimit, int(UInt32.self, atLeast: 1),
                       else: "expected a count >= 1")
        case "contin_succ_limit":
            return set(\.balancer.continSuccLimit, int(UInt32.self, atLeast: 1),
                       else: "expected a count >= 1")
        case "err_rate": return set(\.balancer.errRate, rate(), else: "expected a rate 0...1")
        case "succ_rate": return set(\.balancer.succRate, rate(), else: "expected a rate 0...1")
        case "window_err_rate": return set(\.balancer.windowErrRate, rate(), else: "expected a rate 0...1")
        case "idle_timeout": return set(\.balancer.idleTimeout, seconds(), else: "expected positive seconds")
        case "overload_timeout": return set(\.balancer.overloadTimeout, seconds(), else: "expected positive seconds")
        case "update_timeout": return set(\.balancer.updateTimeout, seconds(), else: "expected positive seconds")
        default:
            return "unknown key (known: \(Self.fileKeys.joined(separator: ", ")))"
        }
        return nil
    }
}

/// Which source addresses an agent answers on its UDP ports.
public enum AgentSourceFilter: Sendable, Hashable {
    /// 127.0.0.0/8 only (the default: callers on this machine).
    case loopback
    /// Every address (`--allow-remote`).
    case any
    /// The addresses of one IPv4 network (`ip` in reading order, `prefixLength` 0...32).
    case network(ip: UInt32, prefixLength: Int)

    /// Whether `ip` (reading order, as `IPv4Endpoint.ip`) may call the agent.
    public func allows(_ ip: UInt32) -> Bool {
        switch self {
        case .any: return true
        case .loopback: return ip >> 24 == 127
        case .network(let network, let prefixLength):
            guard prefixLength > 0 else { return true }
            let mask: UInt32 = prefixLength >= 32 ? .max : ~(UInt32.max >> UInt32(prefixLength))
            return ip & mask == network & mask
        }
    }
}

extension StringProtocol {
    var trimmingWhitespace: String {
        var s = Substring(self)
        while let f = s.first, f == " " || f == "\t" || f == "\r" { s.removeFirst() }
        while let l = s.last, l == " " || l == "\t" || l == "\r" { s.removeLast() }
        return String(s)
    }
}

