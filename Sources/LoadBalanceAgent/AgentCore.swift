import LarsProtocol
import LoadBalancing
import SwitchyardCore

/// The agent's logic: a balancer per module, which modules to fetch and when, what to report. A value type with no
/// I/O, no locks and no clock (the model is `RouteBalancer`): every input that depends on time takes it (`now`,
/// monotonic nanoseconds; the reports' wall-clock `timestamp`) and appends what must happen to `actions`, which the
/// shell (`AgentLoopState`, on the agent's loop) performs in order.
///
/// ```
///  admit(source)                        --> false (dropped, counted) for a source outside `allowedSources`
///  GetHost / GetHost by key / GetRoute  --> answer (.replyHost / .replyRoute); a first request also .askNameService
///                                           (rate limited per source; a full table evicts an empty module)
///  batch GetHost                        --> one .replyBatch: every item answered as its own GetHost, in order
///                                           (more than maxBatchItems, or none: refused with retcode 2)
///  Report                               --> counted in the module's balancer (nothing to send); without the
///                                           configured secret dropped and counted
///  GetRouteResponse (reply or push)     --> hosts replaced; the cache marked dirty and .log when they changed
///  takeCacheSnapshot (cache timer)      --> the modules with hosts, when something changed since the last one
///  name service connected / lost        --> .askNameService for every module / .log once per outage
///  refreshRoutes (timer)                --> empty modules forgotten, stale routes asked again
///  flushReports (timer)                 --> one .sendReport per module with calls since the last flush
/// ```
///
/// `Peer` is whatever identifies the sender of a request to the shell (the agent uses `UDPPeer`; tests an `Int`):
/// the core only hands it back in the answer. The shell reuses one `actions` buffer, so the request path allocates
/// nothing for it. Not thread-safe (a value): the agent keeps it on its loop.
public struct AgentCore<Peer> {
    /// What the shell must do after an input, in order.
    public enum Action {
        /// Answer a GetHost with `response`: id 5, or 101 when the request was by key (id 100).
        case replyHost(Lars_GetHostResponse, byKey: Bool, to: Peer)
        /// Answer a batch GetHost with `response` (id 105).
        case replyBatch(Switchyard_Lb_GetHostBatchResponse, to: Peer)
        /// Answer an API GetRoute with `response` (id 8).
        case replyRoute(Lars_GetRouteResponse, to: Peer)
        /// Send a GetRouteRequest (id 1) to the name service (dropped when it is not connected).
        case askNameService(Lars_GetRouteRequest)
        /// Send a ReportStatusRequest (id 3) to the reporter (dropped when it is not connected).
        case sendReport(Lars_ReportStatusRequest)
        /// Log this event (each is emitted once per occurrence, never per request).
        case log(AgentEvent)
    }

    struct Module {
        var balancer: RouteBalancer
        /// A route arrived (from the name service or the cache file); until then GetHost answers NOEXIST.
        var hasRoute = false
        /// When the route was last received from the name service (0: never, for instance loaded from the file).
        var updatedAt: UInt64 = 0
        /// When the route was last asked for (0: never).
        var askedAt: UInt64 = 0
        /// When a request last found this module without hosts (an empty module unused for
        /// `emptyModuleTimeout` is forgotten).
        var emptyUsedAt: UInt64 = 0
        /// The module had hosts at some point (such a module is never evicted to make room).
        var everHadHosts = false
        /// Which entry of `creationOrder` is this module's (a forgotten and re-created module gets a new one).
        var stamp: UInt64 = 0
        /// An API GetRoute reply of this route was cut to fit a datagram, and logged (once per route).
        var truncationLogged = false
    }

    /// A token bucket of one source: `tokens` as of `updatedAt`.
    struct Bucket {
        var tokens: Double
        var updatedAt: UInt64
    }

    public let configuration: AgentConfiguration
    private let updateTimeoutNs: UInt64
    private let retryNs: UInt64
    private let emptyModuleTimeoutNs: UInt64

    private var modules: [RouteKey: Module] = [:]
    /// Modules in the order they were created, oldest first (from `creationHead` on): the eviction candidates.
    /// An entry whose stamp no longer matches its module (forgotten, or re-created) is skipped and dropped.
    private var creationOrder: [(key: RouteKey, stamp: UInt64)] = []
    private var creationHead = 0
    private var nextStamp: UInt64 = 1
    private var unreported: Set<RouteKey> = []
    private var nameServiceDown = false
    private var atModuleLimit = false
    /// A route with hosts changed since the last `takeCacheSnapshot()`.
    private var cacheDirty = false
    /// Unknown-module buckets per source address, and the one the sources beyond `maxRateLimitedSources` share.
    private var buckets: [UInt32: Bucket] = [:]
    private var overflowBucket: Bucket?
    private var throttleEpisode = RefusalEpisode()
    private var remoteEpisode = RefusalEpisode()
    private var secretEpisode = RefusalEpisode()
    /// Report batches dropped for their size (logged once per episode).
    private var batchEpisode = RefusalEpisode()
    private let reportSecret: [UInt8]?
    /// Counts since the start (`statistics` adds the module count).
    private var counts = AgentStatistics()

    public init(configuration: AgentConfiguration) {
        self.configuration = configuration
        updateTimeoutNs = configuration.balancer.updateTimeout.nanosecondsSaturated
        retryNs = configuration.routeRetryInterval.nanosecondsSaturated
        emptyModuleTimeoutNs = configuration.emptyModuleTimeout.nanosecondsSaturated
        reportSecret = configuration.reportSecret.map { Array($0.utf8) }
    }

    // MARK: Routes

    /// Installs routes read from the cache file, with their weights (before any request).
    public mutating func loadCachedRoutes(_ routes: [RouteKey: CachedRoute], now: UInt64) {
        for (key, route) in routes where !route.hosts.isEmpty && modules.count < configuration.maxModules {
            var balancer = RouteBalancer(settings: configuration.balancer)
            balancer.setHosts(route.hosts, weights: route.weights, now: now)
            modules[key] = Module(balancer: balancer, hasRoute: true, emptyUsedAt: now, everHadHosts: true)
        }
    }

    /// Installs routes whose hosts all weigh 1.
    public mutating func loadCachedRoutes(_ routes: [RouteKey: [Host]], now: UInt64) {
        loadCachedRoutes(routes.mapValues { CachedRoute(hosts: $0) }, now: now)
    }

    /// A GetRouteResponse from the name service, a reply or a push: the module's hosts (and the loads the
    /// self-registered ones reported, which GetHost by key reads) become these. The cache is
    /// saved (and the change logged) only when the hosts changed or the module had no route yet.
    public mutating func routeArrived(_ response: Lars_GetRouteResponse, now: UInt64, actions: inout [Action]) {
        let key = RouteKey(modid: response.modid, cmdid: response.cmdid)
        let hosts = response.host.compactMap { Host(wireIP: $0.ip, wirePort: $0.port) }
        // The loads self-registered hosts reported (a Switchyard name service's extension; absent from Lars's).
        var loads: [Host: HostLoad] = [:]
        // And their weights (field 5, also ours): absent is 1; the balancer clamps above HostWeight.max.
        var weights: [Host: UInt32] = [:]
        for info in response.host where (info.hasLoad && info.hasCapacity) || info.hasWeight {
            guard let host = Host(wireIP: info.ip, wirePort: info.port) else { continue }
            if info.hasLoad && info.hasCapacity { loads[host] = HostLoad(load: info.load, capacity: info.capacity) }
            if info.hasWeight { weights[host] = info.weight }
        }
        // Only the modules the agent asked for (or has): an unsolicited answer for another module creates none.
        guard var module = modules[key] else { return }
        let hadHosts = !module.balancer.hosts.isEmpty
        let changed = Set(module.balancer.hosts) != Set(hosts)
            || hosts.contains { host in
                module.balancer.weight(of: host) != min(weights[host] ?? HostWeight.standard, HostWeight.max)
            }
        // A module that just lost its hosts (or arrives without any) starts its idle time now.
        if hosts.isEmpty && (hadHosts || module.emptyUsedAt == 0) { module.emptyUsedAt = now }
        module.balancer.setHosts(hosts, loads: loads, weights: weights, now: now)
        module.hasRoute = true
        module.updatedAt = now
        if !hosts.isEmpty { module.everHadHosts = true }
        modules[key] = module
        // A module the name service does not know (no hosts before, none now) is neither logged nor saved.
        if changed {
            actions.append(.log(.routeUpdated(key, hostCount: hosts.count)))
            cacheDirty = true
        }
    }

    private mutating func ask(_ key: RouteKey, now: UInt64, actions: inout [Action]) {
        modules[key]?.askedAt = now
        var request = Lars_GetRouteRequest()
        request.modid = key.modid
        request.cmdid = key.cmdid
        actions.append(.askNameService(request))
    }

    /// Connected (or reconnected) to the name service: ask again for every module.
    public mutating func nameServiceConnected(now: UInt64, actions: inout [Action]) {
        if nameServiceDown { actions.append(.log(.nameServiceReachable)) }
        nameServiceDown = false
        for key in modules.keys { ask(key, now: now, actions: &actions) }
    }

    /// The name service connection closed or could not be made: logged once until it is back.
    public mutating func nameServiceLost(actions: inout [Action]) {
        if !nameServiceDown { actions.append(.log(.nameServiceUnreachable)) }
        nameServiceDown = true
    }

    /// Forgets modules without hosts that nobody asked for within `emptyModuleTimeout` (module ids the name
    /// service does not know, typos, probes), then asks again for routes older than update_timeout and for modules
    /// still waiting for a first answer (after `routeRetryInterval`). The shell calls it about once a second.
    public mutating func refreshRoutes(now: UInt64, actions: inout [Action]) {
        let timeout = emptyModuleTimeoutNs
        let forgotten = modules.filter { _, m in m.balancer.hosts.isEmpty && now &- m.emptyUsedAt >= timeout }
        if !forgotten.isEmpty {
            for key in forgotten.keys { modules[key] = nil }
            actions.append(.log(.forgotEmptyModules(count: forgotten.count)))
        }
        var due: [RouteKey] = []
        for (key, module) in modules {
            if !module.hasRoute || module.updatedAt == 0 {
                if now &- module.askedAt >= retryNs { due.append(key) }
            } else if now &- module.updatedAt >= updateTimeoutNs && now &- module.askedAt >= updateTimeoutNs {
                due.append(key)
            }
        }
        for key in due { ask(key, now: now, actions: &actions) }
    }

    /// The routes to write to the cache file: every module with hosts (hosts sorted, with their weights; at most
    /// `maxModules`), or
    /// nil when no route with hosts changed since the last call (or there is no cache file). Clears the dirty flag:
    /// the shell calls it once per `routeCacheInterval` and writes what it gets, so a burst of changes is one write.
    public mutating func takeCacheSnapshot() -> [RouteKey: CachedRoute]? {
        guard cacheDirty, configuration.routeCacheFile != nil else { return nil }
        cacheDirty = false
        counts.cacheSnapshots += 1
        var routes: [RouteKey: CachedRoute] = [:]
        for (key, module) in modules where !module.balancer.hosts.isEmpty {
            let hosts = module.balancer.hosts.sorted()
            var weights: [Host: UInt32] = [:]
            for host in hosts where module.balancer.weight(of: host) != HostWeight.standard {
                weights[host] = module.balancer.weight(of: host)
            }
            routes[key] = CachedRoute(hosts: hosts, weights: weights)
        }
        return routes
    }

    // MARK: Requests

    /// GetHost (id 4, answered with 5) or, with `key` (the key's hash, `BoundedLoadRing.hash`), GetHost by key
    /// (id 100, answered with 101 and the same body). A module seen for the first time is answered NOEXIST and
    /// asked for.
    public mutating func getHost(seq: UInt32, modid: Int32, cmdid: Int32, key hashedKey: UInt64? = nil,
                                 from peer: Peer, source: UInt32, now: UInt64, actions: inout [Action]) {
        let response = answerHost(seq: seq, modid: modid, cmdid: cmdid, key: hashedKey, source: source, now: now,
                                  actions: &actions)
        actions.append(.replyHost(response, byKey: hashedKey != nil, to: peer))
    }

    /// A batch GetHost (id 104, answered with 105): each item is answered as its own GetHost (by key when it has
    /// one) would be, in request order, each with the batch's seq and its own retcode; the counters count each item
    /// as that request. A batch with more than `maxBatchItems` items, or none, is answered retcode 2 with a reason
    /// and no answers (counted in `batchesRefused`; nothing is picked).
    public mutating func getHostBatch(_ request: Switchyard_Lb_GetHostBatchRequest, from peer: Peer, source: UInt32,
                                      now: UInt64, actions: inout [Action]) {
        counts.batchRequests += 1
        var response = Switchyard_Lb_GetHostBatchResponse()
        response.seq = request.seq
        let count = request.items.count
        guard (1...configuration.maxBatchItems).contains(count) else {
            counts.batchesRefused += 1
            response.retcode = LarsReturnCode.systemError
            response.reason = count == 0 ? "the batch asks for no service"
                : "the batch asks for \(count) services; the agent answers at most \(configuration.maxBatchItems)"
            actions.append(.replyBatch(response, to: peer))
            return
        }
        response.retcode = LarsReturnCode.success
        response.answers.reserveCapacity(count)
        for item in request.items {
            response.answers.append(answerHost(seq: request.seq, modid: item.modid, cmdid: item.cmdid,
                                               key: item.hasKey ? BoundedLoadRing.hash(item.key) : nil,
                                               source: source, now: now, actions: &actions))
        }
        counts.batchItems += count
        actions.append(.replyBatch(response, to: peer))
    }

    /// The answer of one GetHost (by key with `hashedKey`), counted; a first request for a module asks for it.
    private mutating func answerHost(seq: UInt32, modid: Int32, cmdid: Int32, key hashedKey: UInt64?,
                                     source: UInt32, now: UInt64, actions: inout [Action]) -> Lars_GetHostResponse {
        let key = RouteKey(modid: modid, cmdid: cmdid)
        if hashedKey == nil { counts.getHostRequests += 1 } else { counts.getHostByKeyRequests += 1 }
        var response = Lars_GetHostResponse()
        response.seq = seq
        response.modid = modid
        response.cmdid = cmdid
        if modules[key]?.hasRoute == true {
            let picked = hashedKey.map { modules[key]!.balancer.pick(key: $0, now: now) }
                ?? modules[key]!.balancer.pick(now: now)
            switch picked {
            case .host(let host), .probe(let host):
                response.retcode = LarsReturnCode.success
                response.host = Lars_HostInfo(host)
            case .overloaded:
                response.retcode = LarsReturnCode.overload
            case .empty:
                modules[key]!.emptyUsedAt = now
                response.retcode = LarsReturnCode.notExist
            }
        } else {
            newModule(key, source: source, now: now, actions: &actions)
            response.retcode = LarsReturnCode.notExist
        }
        if response.retcode == LarsReturnCode.notExist { counts.notExistAnswers += 1 }
        return response
    }

    /// A ReportRequest (id 6, no answer): the call's outcome counts in the module's balancer and goes into the
    /// module's next report. Reports for unknown modules or hosts are ignored. With `reportSecret` configured, a
    /// report whose `secret` (`ReportSecret.extract`) does not match is dropped, counted, and logged once per episode.
    public mutating func report(_ request: Lars_ReportRequest, secret: [UInt8]? = nil, source: UInt32, now: UInt64,
                                actions: inout [Action]) {
        counts.reportRequests += 1
        if let expected = reportSecret, !ReportSecret.matches(secret ?? [], expected) {
            counts.reportsRejected += 1
            if secretEpisode.refuse(now: now) { actions.append(.log(.reportsWithoutSecret(source: source))) }
            return
        }
        let key = RouteKey(modid: request.modid, cmdid: request.cmdid)
        guard modules[key] != nil, let host = Host(wireIP: request.host.ip, wirePort: request.host.port) else { return }
        modules[key]!.balancer.report(host: host, retcode: request.retcode, now: now)
        unreported.insert(key)
    }

    /// Reports one report batch (id 106) may carry at most, over all its results, and results at most: a client
    /// with more sends several batches. (Bounds the work one datagram can cause.)
    public static var maxReportsPerBatch: Int { 4096 }
    public static var maxReportBatchResults: Int { 64 }

    /// A report batch (id 106, no answer): the outcomes of many calls to the module's hosts, each result a host
    /// with `succ` successful calls and then `err` failed ones, in the order of the results, counted exactly as
    /// that many ReportRequests in that order would be (`caller`, `ts` and `overload` are not read). The secret,
    /// when the agent requires one, is field 15 of the body, as on a ReportRequest. A batch with more than
    /// ``maxReportBatchResults`` results, none, or more than ``maxReportsPerBatch`` reports is dropped, counted
    /// (`reportBatchesRefused`) and logged once per episode; reports for unknown modules or hosts are ignored.
    public mutating func reportBatch(_ request: Lars_ReportStatusRequest, secret: [UInt8]? = nil, source: UInt32,
                                     now: UInt64, actions: inout [Action]) {
        counts.reportBatchRequests += 1
        let total = request.results.reduce(0) { $0 + Int($1.succ) + Int($1.err) }
        guard (1...Self.maxReportBatchResults).contains(request.results.count), total <= Self.maxReportsPerBatch
        else {
            counts.reportBatchesRefused += 1
            if batchEpisode.refuse(now: now) {
                actions.append(.log(.reportBatchRefused(source: source, results: request.results.count,
                                                        reports: total)))
            }
            return
        }
        counts.reportRequests += total
        if let expected = reportSecret, !ReportSecret.matches(secret ?? [], expected) {
            counts.reportsRejected += total
            if secretEpisode.refuse(now: now) { actions.append(.log(.reportsWithoutSecret(source: source))) }
            return
        }
        let key = RouteKey(modid: request.modid, cmdid: request.cmdid)
        guard modules[key] != nil else { return }
        for result in request.results {
            guard let host = Host(wireIP: result.ip, wirePort: result.port) else { continue }
            modules[key]!.balancer.report(host: host, success: true, count: Int(result.succ), now: now)
            modules[key]!.balancer.report(host: host, success: false, count: Int(result.err), now: now)
        }
        unreported.insert(key)
    }

    /// An API GetRoute (id 7, answered with 8): the hosts the agent knows (none while a new module is fetched).
    /// A reply that would not fit in one datagram carries as many hosts as fit (logged once per route, counted).
    public mutating func getRoute(_ request: Lars_GetRouteRequest, from peer: Peer, source: UInt32, now: UInt64,
                                  actions: inout [Action]) {
        counts.getRouteRequests += 1
        let key = RouteKey(modid: request.modid, cmdid: request.cmdid)
        var response = Lars_GetRouteResponse()
        response.modid = request.modid
        response.cmdid = request.cmdid
        if let module = modules[key] {
            if module.balancer.hosts.isEmpty { modules[key]!.emptyUsedAt = now }
            response.host = module.balancer.hosts.map { Lars_HostInfo($0) }
            let total = response.host.count
            if response.truncateHosts(toFit: LarsFrameLimit.maxDatagramBody) > 0 {
                counts.routeRepliesTruncated += 1
                if !module.truncationLogged {
                    modules[key]!.truncationLogged = true
                    actions.append(.log(.routeReplyTruncated(key, hostCount: total, sent: response.host.count)))
                }
            }
        } else {
            newModule(key, source: source, now: now, actions: &actions)
        }
        actions.append(.replyRoute(response, to: peer))
    }

    /// Whether a datagram from `source` (an IPv4 address in reading order) is served: false for a source outside
    /// `allowedSources` (the shell drops the datagram), counted and logged once per episode.
    public mutating func admit(source: UInt32, now: UInt64, actions: inout [Action]) -> Bool {
        if configuration.allowedSources.allows(source) { return true }
        counts.remoteDatagramsDropped += 1
        if remoteEpisode.refuse(now: now) { actions.append(.log(.remoteSourceDropped(source: source))) }
        return false
    }

    /// Starts fetching a module asked for the first time (a known one only has its use stamped), if `source` has
    /// a token left (else the request is answered as for an unknown module, counted, and logged once per episode).
    /// At `maxModules` the oldest module that never had hosts is evicted to make room; when every module has
    /// hosts, nothing new is kept: the request is answered NOEXIST and the limit logged once per episode.
    private mutating func newModule(_ key: RouteKey, source: UInt32, now: UInt64, actions: inout [Action]) {
        if modules[key] != nil {
            modules[key]!.emptyUsedAt = now
            return
        }
        guard takeToken(source: source, now: now) else {
            counts.unknownModulesThrottled += 1
            if throttleEpisode.refuse(now: now) { actions.append(.log(.unknownModulesThrottled(source: source))) }
            return
        }
        if modules.count >= configuration.maxModules && !evictOldestEmptyModule() {
            counts.newModulesRefused += 1
            if !atModuleLimit {
                atModuleLimit = true
                actions.append(.log(.moduleLimitReached))
            }
            return
        }
        atModuleLimit = false
        var module = Module(balancer: RouteBalancer(settings: configuration.balancer, now: now))
        module.emptyUsedAt = now
        module.stamp = nextStamp
        nextStamp += 1
        modules[key] = module
        creationOrder.append((key, module.stamp))
        compactCreationOrder()
        ask(key, now: now, actions: &actions)
    }

    /// Removes the oldest module that never had hosts; false when there is none.
    private mutating func evictOldestEmptyModule() -> Bool {
        while creationHead < creationOrder.count {
            let (key, stamp) = creationOrder[creationHead]
            creationHead += 1
            guard let module = modules[key], module.stamp == stamp else { continue }  // forgotten or re-created
            guard !module.everHadHosts else { continue }  // has hosts (or had): never evicted, leaves the queue
            modules[key] = nil
            counts.modulesEvicted += 1
            return true
        }
        return false
    }

    /// Drops the consumed and stale entries of `creationOrder` once they outnumber the live ones, so it stays within
    /// about twice the modules held (amortized O(1) per module).
    private mutating func compactCreationOrder() {
        guard creationOrder.count > 2 * modules.count + 64 else { return }
        creationOrder = creationOrder[creationHead...].filter { entry in
            guard let module = modules[entry.key] else { return false }
            return module.stamp == entry.stamp && !module.everHadHosts
        }
        creationHead = 0
    }

    /// Takes one unknown-module token of `source`'s bucket (refilled at `unknownModuleRate`, up to
    /// `unknownModuleBurst`). At `maxRateLimitedSources` buckets, those refilled to full are dropped first; a source
    /// still without room shares the overflow bucket.
    private mutating func takeToken(source: UInt32, now: UInt64) -> Bool {
        let burst = Double(configuration.unknownModuleBurst)
        let rate = configuration.unknownModuleRate
        func refilled(_ bucket: Bucket) -> Bucket {
            let elapsed = Double(now &- bucket.updatedAt) / 1e9
            return Bucket(tokens: min(burst, bucket.tokens + elapsed * rate), updatedAt: now)
        }
        func take(_ bucket: inout Bucket) -> Bool {
            bucket = refilled(bucket)
            guard bucket.tokens >= 1 else { return false }
            bucket.tokens -= 1
            return true
        }
        if buckets[source] == nil && buckets.count >= configuration.maxRateLimitedSources {
            buckets = buckets.filter { refilled($0.value).tokens < burst }
        }
        if buckets[source] == nil && buckets.count >= configuration.maxRateLimitedSources {
            var shared = overflowBucket ?? Bucket(tokens: burst, updatedAt: now)
            defer { overflowBucket = shared }
            return take(&shared)
        }
        var bucket = buckets[source] ?? Bucket(tokens: burst, updatedAt: now)
        defer { buckets[source] = bucket }
        return take(&bucket)
    }

    // MARK: Reports

    /// Appends one ReportStatusRequest per module with calls since the last flush (the shell calls it every
    /// `reportInterval`, so a module is reported at most once per interval), and lets unreported calls fade from
    /// the keyed-pick loads. A report holds every host of the module with the running counts of its current window
    /// (Lars's semantics, PROTOCOL.md: the reporter overwrites its row with them). `timestamp`: the reports' `ts`,
    /// wall-clock seconds (Lars's `time(NULL)`).
    public mutating func flushReports(timestamp: UInt32, actions: inout [Action]) {
        for key in modules.keys { modules[key]!.balancer.decayOutstanding() }
        guard !unreported.isEmpty else { return }
        for key in unreported {
            guard let summary = modules[key]?.balancer.takeReportSummary(), !summary.isEmpty else { continue }
            var request = Lars_ReportStatusRequest()
            request.modid = key.modid
            request.cmdid = key.cmdid
            request.caller = Int32(bitPattern: configuration.caller)
            request.ts = timestamp
            request.results = summary.map {
                var r = Lars_HostCallResult()
                r.ip = $0.host.wireIP
                r.port = Int32($0.host.port)
                r.succ = $0.successes
                r.err = $0.errors
                r.overload = $0.overloaded
                return r
            }
            counts.reportsSent += 1
            actions.append(.sendReport(request))
        }
        unreported.removeAll(keepingCapacity: true)
    }

    // MARK: Inspection

    /// The state of one module's balancer (nil when the agent does not know the module).
    public func balancer(for key: RouteKey) -> RouteBalancer? { modules[key]?.balancer }

    /// Requests and answers so far, and the modules known now.
    public var statistics: AgentStatistics {
        var s = counts
        s.modules = modules.count
        return s
    }
}

extension AgentCore: Sendable where Peer: Sendable {}
extension AgentCore.Action: Sendable where Peer: Sendable {}

/// What the agent logs: once per occurrence (a route change, an outage), never per request.
public enum AgentEvent: Sendable, Hashable {
    /// A module's hosts changed (or its first route arrived).
    case routeUpdated(RouteKey, hostCount: Int)
    /// The name service is connected again after an outage.
    case nameServiceReachable
    /// The name service connection closed or failed; the agent serves the routes it knows.
    case nameServiceUnreachable
    /// Modules without hosts that nobody asked for within `emptyModuleTimeout` were dropped.
    case forgotEmptyModules(count: Int)
    /// `maxModules` modules are known, all with hosts: requests for further ones get NOEXIST (logged once per
    /// episode).
    case moduleLimitReached
    /// A source asked for more unknown modules than its token bucket allows (once per episode: the first
    /// refusal after 10 s without any).
    case unknownModulesThrottled(source: UInt32)
    /// Datagrams from a source outside `allowedSources` are dropped (once per episode).
    case remoteSourceDropped(source: UInt32)
    /// Reports without the configured secret are dropped (once per episode).
    case reportsWithoutSecret(source: UInt32)
    /// A report batch with no result, or over the bounds, was dropped (once per episode).
    case reportBatchRefused(source: UInt32, results: Int, reports: Int)
    /// An API GetRoute reply of this route is cut to `sent` of its `hostCount` hosts to fit a datagram (once per
    /// route).
    case routeReplyTruncated(RouteKey, hostCount: Int, sent: Int)
}

/// One episode of refusals: the first refusal logs, the ones after it do not until `quietNs` passes without any.
struct RefusalEpisode {
    static let quietNs: UInt64 = 10_000_000_000
    private var lastRefusal: UInt64?

    /// Records a refusal at `now`; true when it starts an episode (worth its one log line).
    mutating func refuse(now: UInt64) -> Bool {
        defer { lastRefusal = now }
        guard let last = lastRefusal else { return true }
        return now &- last >= Self.quietNs
    }
}

/// Counters of an agent since it started, and the modules it knows now.
public struct AgentStatistics: Sendable, Hashable {
    /// GetHost requests (id 4).
    public var getHostRequests = 0
    /// GetHost-by-key requests (id 100).
    public var getHostByKeyRequests = 0
    /// Reports of calls: report requests (id 6), and the calls of report batches (id 106).
    public var reportRequests = 0
    /// Report batches (id 106), and those dropped (too many results or reports, or none).
    public var reportBatchRequests = 0
    public var reportBatchesRefused = 0
    /// API GetRoute requests (id 7).
    public var getRouteRequests = 0
    /// GetHost answers (either id) with NOEXIST: the module is unknown, still fetched, or has no hosts.
    public var notExistAnswers = 0
    /// ReportStatusRequests handed to the reporter link (one per module per report interval with calls).
    public var reportsSent = 0
    /// Modules the agent knows (with a route, or being fetched).
    public var modules = 0
    /// Requests for unknown modules refused by the source's token bucket (answered NOEXIST, not asked for).
    public var unknownModulesThrottled = 0
    /// Modules that never had hosts evicted to make room for a new one at `maxModules`.
    public var modulesEvicted = 0
    /// New modules refused at `maxModules` (every module held has hosts).
    public var newModulesRefused = 0
    /// Datagrams dropped because their source is outside `allowedSources`.
    public var remoteDatagramsDropped = 0
    /// Reports dropped for a missing or wrong secret.
    public var reportsRejected = 0
    /// API GetRoute replies cut to fit one datagram.
    public var routeRepliesTruncated = 0
    /// Route cache snapshots handed to the writer (each is at most one write of the file).
    public var cacheSnapshots = 0
    /// Batch GetHost requests (id 104), and the services their served batches asked for (each also counted as a
    /// GetHost or GetHost-by-key request).
    public var batchRequests = 0
    public var batchItems = 0
    /// Batches refused: more than `maxBatchItems` items, or none.
    public var batchesRefused = 0

    public init() {}
}
