import SwitchyardCore
/// What `RouteBalancer.pick(now:)` decided.
public enum PickResult: Sendable, Hashable {
    /// An idle host, round robin (weighted when the hosts' weights differ).
    case host(Host)
    /// An overloaded host sent one request to see whether it recovered (every `probeNum`-th request).
    case probe(Host)
    /// Every host is overloaded and this request is not a probe (Lars answers OVERLOAD).
    case overloaded
    /// The route has no hosts (Lars answers NOEXIST).
    case empty

    /// The chosen host, probe or not.
    public var host: Host? {
        switch self {
        case .host(let h), .probe(let h): return h
        case .overloaded, .empty: return nil
        }
    }
}

/// The balancer of one (modid, cmdid): Lars's semantics as a pure state machine, driven by the caller's clock.
///
/// ```
///            virtual err rate > err_rate, or contin errors >= contin_err_limit,
///            or real err rate over an idle window > window_err_rate
///   +------+ ---------------------------------------------------------> +------------+
///   | idle |                                                           | overloaded |
///   +------+ <--------------------------------------------------------- +------------+
///            virtual succ rate > succ_rate, or contin successes >= contin_succ_limit,
///            or overload_timeout elapsed
/// ```
///
/// - `pick` serves idle hosts round robin; every `probeNum`-th request goes to an overloaded host (round robin
///   among them) as a probe. With no idle host, a request that is not a probe gets `.overloaded`.
/// - Weights (``HostWeight``, `setHosts(_:loads:weights:now:)`): while every idle host weighs the same, round robin
///   is Lars's, in list order. Otherwise it is smooth weighted round robin: each pick adds every idle host's weight
///   to its running score and takes the highest score (the first in list order on a tie), which then gives back the
///   idle hosts' total weight. Every run of as many picks as that total gives each host exactly its weight in picks,
///   spread out (5, 1, 1 picks a a b a c a a), never in a burst. A host of weight 0 is drained: never picked while
///   an idle host weighs more than 0 (when none does, the idle hosts are served as if they weighed 1 each). Probes of
///   overloaded hosts stay round robin, whatever the weights.
/// - `report` counts a call's outcome (virtual and real counters, consecutive runs) and applies the transitions.
///   An idle host's window is checked when a report arrives at least `idleTimeout` after the window began: above
///   `windowErrRate` real errors it becomes overloaded, otherwise its counters are reset and a new window begins.
/// - An overloaded host returns to idle `overloadTimeout` after it was overloaded (checked on `pick` and `report`).
///
/// A value type: no locks, no clock, no I/O. The agent keeps one per module on its loop. `now` is any monotonic
/// clock in nanoseconds, the same for every call.
public struct RouteBalancer: Sendable {
    public let settings: BalancerSettings
    private var statuses: [Host: HostStatus] = [:]
    private var idle: [Host] = []
    private var overloaded: [Host] = []
    private var idleCursor = 0
    private var overloadCursor = 0
    /// Requests since the last probe.
    private var accessCount = 0
    /// True when a call was reported since the last `takeReportSummary()`.
    public private(set) var hasUnreportedCalls = false
    /// Calls picked and not yet reported, per host (the loads of keyed picks).
    private var outstanding: [Host: Int] = [:]
    private var outstandingTotal = 0
    /// Built on the first keyed pick after the hosts changed (a module only asked without keys never pays for it).
    private var ring: BoundedLoadRing?
    /// The loads the hosts reported with the route (self-registered hosts that know their capacity); a host without
    /// an entry is never full.
    private var reportedLoads: [Host: HostLoad] = [:]
    /// The weights that are not ``HostWeight/standard`` (a route without weights has none and costs nothing).
    private var weights: [Host: UInt32] = [:]
    /// Smooth weighted round robin's running scores, per idle host (used while the idle hosts' weights differ).
    private var scores: [Host: Int64] = [:]
    private let idleTimeoutNs: UInt64
    private let overloadTimeoutNs: UInt64

    public init(settings: BalancerSettings = BalancerSettings(), hosts: [Host] = [], now: UInt64 = 0) {
        self.settings = settings
        idleTimeoutNs = settings.idleTimeout.nanosecondsSaturated
        overloadTimeoutNs = settings.overloadTimeout.nanosecondsSaturated
        setHosts(hosts, now: now)
    }

    // MARK: Route

    /// Replaces the route's hosts: hosts still present keep their state and counters, new ones start idle,
    /// removed ones are forgotten (with their counts). Duplicates count once. `loads`: what the route says the hosts
    /// carry (replacing what it said before; hosts not in the route are ignored): a full host is passed over by
    /// ``pick(key:now:)``. `weights`: each host's weight (``HostWeight``; absent: 1; above ``HostWeight/max``: the
    /// max), replacing the weights given before.
    public mutating func setHosts(_ hosts: [Host], loads: [Host: HostLoad] = [:], weights: [Host: UInt32] = [:],
                                  now: UInt64) {
        var seen = Set<Host>()
        let unique = hosts.filter { seen.insert($0).inserted }
        reportedLoads = loads.filter { seen.contains($0.key) }
        let newWeights = weights.compactMapValues { $0 == HostWeight.standard ? nil : min($0, HostWeight.max) }
            .filter { seen.contains($0.key) }
        if newWeights != self.weights {
            self.weights = newWeights
            scores = [:]  // a new schedule from the start: the new shares hold from the next pick on
        }
        for host in scores.keys where !seen.contains(host) { scores[host] = nil }
        for host in statuses.keys where !seen.contains(host) {
            statuses[host] = nil
            outstandingTotal -= outstanding.removeValue(forKey: host) ?? 0
        }
        ring = nil
        for host in unique where statuses[host] == nil {
            statuses[host] = HostStatus(idleAt: now, settings: settings)
        }
        // Lists follow the route's order, so round robin is predictable.
        idle = unique.filter { statuses[$0]!.health == .idle }
        overloaded = unique.filter { statuses[$0]!.health == .overloaded }
        if idleCursor >= idle.count { idleCursor = 0 }
        if overloadCursor >= overloaded.count { overloadCursor = 0 }
    }

    /// The route's hosts: idle ones first, then overloaded ones.
    public var hosts: [Host] { idle + overloaded }

    /// Idle hosts in serving order (route order, then hosts that recovered, in the order they did).
    public var idleHosts: [Host] { idle }

    /// Overloaded hosts in probing order.
    public var overloadedHosts: [Host] { overloaded }

    public var isEmpty: Bool { statuses.isEmpty }

    /// The state and counters of `host`, nil when it is not in the route.
    public func state(of host: Host) -> HostStatus? { statuses[host] }

    /// The load `host` reported with the route, nil when it reported none.
    public func reportedLoad(of host: Host) -> HostLoad? { reportedLoads[host] }

    /// Whether `host` reported itself full (its load at its capacity).
    public func isFull(_ host: Host) -> Bool { reportedLoads[host]?.isFull ?? false }

    /// The weight of `host` (``HostWeight/standard`` when the route gave it none, or when it is not in the route).
    public func weight(of host: Host) -> UInt32 { weights[host] ?? HostWeight.standard }

    /// Each host's fraction of the picks so far (0 when nothing was picked yet).
    public var callShares: [Host: Double] {
        let total = statuses.values.reduce(UInt64(0)) { $0 + $1.picks }
        return statuses.mapValues { total == 0 ? 0 : Double($0.picks) / Double(total) }
    }

    // MARK: Requests

    /// Chooses a host for one request.
    public mutating func pick(now: UInt64) -> PickResult {
        if statuses.isEmpty { return .empty }
        recoverExpiredOverloads(now: now)
        if idle.isEmpty {
            if accessCount >= settings.probeNum - 1 {
                accessCount = 0
                return .probe(nextOverloaded())
            }
            accessCount += 1
            return .overloaded
        }
        if !overloaded.isEmpty {
            if accessCount >= settings.probeNum - 1 {
                accessCount = 0
                return .probe(nextOverloaded())
            }
            accessCount += 1
        }
        return .host(nextIdle())
    }

    /// Chooses a host for a request with a key (consistent hashing with bounded loads, `BoundedLoadRing`): the
    /// key's host on the ring among the idle hosts while its load of unreported calls is within the bound, else
    /// the next one. Overloaded hosts are left out (and probed every probe_num-th request, as with `pick(now:)`);
    /// with no idle host this is `pick(now:)`. Hosts that reported themselves full (`setHosts(_:loads:now:)`) are
    /// passed over: a key stays on its host until that host is full, then goes to the next one on the ring. When
    /// every idle host is full the answer is `.overloaded` (overloaded hosts are still probed, loads aside).
    public mutating func pick(key: UInt64, now: UInt64) -> PickResult {
        if statuses.isEmpty { return .empty }
        recoverExpiredOverloads(now: now)
        if idle.isEmpty { return pick(now: now) }
        if !overloaded.isEmpty {
            if accessCount >= settings.probeNum - 1 {
                accessCount = 0
                return .probe(nextOverloaded())
            }
            accessCount += 1
        }
        let open = reportedLoads.isEmpty ? idle.count : idle.count(where: { !isFull($0) })
        if open == 0 { return .overloaded }
        if ring == nil { ring = makeRing() }
        let statuses = self.statuses
        let outstanding = self.outstanding
        let loads = self.reportedLoads
        let ringWeights = ringWeights()
        func ringWeight(_ host: Host) -> UInt32 { ringWeights[host] ?? HostWeight.standard }
        var openWeight = 0
        for host in idle where !(loads[host]?.isFull ?? false) { openWeight += Int(ringWeight(host)) }
        guard let host = ring!.pick(key: key,
                                   eligible: { statuses[$0]?.health == .idle && !(loads[$0]?.isFull ?? false)
                                       && ringWeight($0) > 0 },
                                   load: { outstanding[$0] ?? 0 }, totalLoad: outstandingTotal,
                                   weight: ringWeight, eligibleWeight: openWeight) else { return .host(nextIdle()) }
        picked(host)
        return .host(host)
    }

    /// Where `key` would go with no load anywhere (its owner on the ring), for inspection.
    public func owner(of key: UInt64) -> Host? { (ring ?? makeRing()).owner(of: key) }

    /// The weights the ring is built with: the route's, except that when every host weighs 0 they all weigh 1 (a
    /// drained route still answers).
    private func ringWeights() -> [Host: UInt32] {
        guard !weights.isEmpty else { return [:] }
        let allDrained = statuses.keys.allSatisfy { weights[$0] == 0 }
        return allDrained ? [:] : weights
    }

    private func makeRing() -> BoundedLoadRing { BoundedLoadRing(hosts: hosts, weights: ringWeights()) }

    /// Unreported calls of `host`.
    public func outstandingCalls(of host: Host) -> Int { outstanding[host] ?? 0 }

    /// Halves every host's count of unreported calls: calls whose report never comes (a caller that does not
    /// report, a lost datagram) fade out of the loads instead of weighing on a host for ever. The agent calls it
    /// once per report interval.
    public mutating func decayOutstanding() {
        guard outstandingTotal > 0 else { return }
        outstandingTotal = 0
        for (host, n) in outstanding {
            let kept = n / 2
            outstanding[host] = kept == 0 ? nil : kept
            outstandingTotal += kept
        }
    }

    private mutating func picked(_ host: Host) {
        statuses[host]!.picks &+= 1
        outstanding[host, default: 0] += 1
        outstandingTotal += 1
    }

    private mutating func nextIdle() -> Host {
        if !weights.isEmpty, let host = nextIdleWeighted() {
            picked(host)
            return host
        }
        if idleCursor >= idle.count { idleCursor = 0 }
        let host = idle[idleCursor]
        idleCursor += 1
        picked(host)
        return host
    }

    /// Smooth weighted round robin over the idle hosts; nil when they all weigh the same (plain round robin then).
    private mutating func nextIdleWeighted() -> Host? {
        // Equal weights (all 0 included: a drained route is served as if every host weighed 1): Lars's round robin.
        guard let first = idle.first.map(weight(of:)), idle.contains(where: { weight(of: $0) != first }) else {
            return nil
        }
        var total: Int64 = 0
        var best: Host?
        var bestScore = Int64.min
        for host in idle {
            let w = Int64(weight(of: host))
            guard w > 0 else { continue }  // drained: some idle host weighs more (the weights differ)
            total += w
            let score = scores[host, default: 0] + w
            scores[host] = score
            if score > bestScore {
                bestScore = score
                best = host
            }
        }
        scores[best!]! -= total
        return best
    }

    private mutating func nextOverloaded() -> Host {
        if overloadCursor >= overloaded.count { overloadCursor = 0 }
        let host = overloaded[overloadCursor]
        overloadCursor += 1
        picked(host)
        return host
    }

    // MARK: Reports

    /// Counts one call's outcome and applies the transitions. Unknown hosts (not in the route) are ignored.
    public mutating func report(host: Host, success: Bool, now: UInt64) {
        guard var s = statuses[host] else { return }
        if let n = outstanding[host], n > 0 {
            outstanding[host] = n - 1
            outstandingTotal -= 1
        }
        if success {
            s.virtualSuccesses &+= 1
            s.realSuccesses &+= 1
            s.consecutiveSuccesses &+= 1
            s.consecutiveErrors = 0
        } else {
            s.virtualErrors &+= 1
            s.realErrors &+= 1
            s.consecutiveErrors &+= 1
            s.consecutiveSuccesses = 0
        }
        hasUnreportedCalls = true

        switch s.health {
        case .idle:
            if !success && (s.virtualErrorRate > settings.errRate || s.consecutiveErrors >= settings.continErrLimit) {
                s.becomeOverloaded(at: now, settings: settings)
            } else if now >= s.since && now - s.since >= idleTimeoutNs {
                if s.realErrorRate > settings.windowErrRate {
                    s.becomeOverloaded(at: now, settings: settings)
                } else {
                    s.becomeIdle(at: now, settings: settings)  // a new window
                }
            }
        case .overloaded:
            if success && (s.virtualSuccessRate > settings.succRate
                           || s.consecutiveSuccesses >= settings.continSuccLimit) {
                s.becomeIdle(at: now, settings: settings)
            } else if now >= s.since && now - s.since >= overloadTimeoutNs {
                s.becomeIdle(at: now, settings: settings)
            }
        }
        let before = statuses[host]!.health
        statuses[host] = s
        if before != s.health { move(host, to: s.health) }
    }

    /// Counts `count` calls with the same outcome, one after another (a report batch's run of them).
    public mutating func report(host: Host, success: Bool, count: Int, now: UInt64) {
        guard count > 0, statuses[host] != nil else { return }
        for _ in 0..<count { report(host: host, success: success, now: now) }
    }

    /// Counts one call's outcome by Lars return code: 0 is a success, anything else an error.
    public mutating func report(host: Host, retcode: Int32, now: UInt64) {
        report(host: host, success: retcode == 0, now: now)
    }

    /// The report of the module, in Lars's terms (PROTOCOL.md, call reports): every host, idle ones first, each with
    /// the running success and error counts of its current window (since it last became idle, or overloaded), which
    /// restart with the window; the reporter overwrites its row with them. Clears `hasUnreportedCalls`.
    public mutating func takeReportSummary() -> [HostCallSummary] {
        hasUnreportedCalls = false
        return (idle + overloaded).map { host in
            let s = statuses[host]!
            return HostCallSummary(host: host, successes: s.realSuccesses, errors: s.realErrors,
                                   overloaded: s.health == .overloaded)
        }
    }

    // MARK: Transitions

    /// Forces overloaded hosts whose `overloadTimeout` has elapsed back to idle.
    public mutating func recoverExpiredOverloads(now: UInt64) {
        guard !overloaded.isEmpty else { return }
        var i = 0
        while i < overloaded.count {
            let host = overloaded[i]
            let since = statuses[host]!.since
            if now >= since && now - since >= overloadTimeoutNs {
                statuses[host]!.becomeIdle(at: now, settings: settings)
                move(host, to: .idle)
            } else {
                i += 1
            }
        }
    }

    private mutating func move(_ host: Host, to health: HostHealth) {
        switch health {
        case .idle:
            if let i = overloaded.firstIndex(of: host) {
                overloaded.remove(at: i)
                if overloadCursor > i { overloadCursor -= 1 }
            }
            idle.append(host)
        case .overloaded:
            if let i = idle.firstIndex(of: host) {
                idle.remove(at: i)
                if idleCursor > i { idleCursor -= 1 }
            }
            scores[host] = nil  // back in the schedule from 0 when it recovers
            overloaded.append(host)
        }
    }
}
