#if canImport(Glibc)
import Glibc
#endif
import Dispatch
import LarsProtocol
import LoadBalancing
import Logging
import Messaging
import Reactor
import SwitchyardCore

/// The agent's state: a balancer per module, the name service and reporter links. Loop thread only (the agent's
/// loop): every handler, timer and callback that touches it runs there, so the request path takes no lock.
final class AgentCore: @unchecked Sendable {
    // @unchecked Sendable: all mutable state is touched on `loop` only (handlers, timers and client callbacks of
    // the agent all run on it); `names` and `reporter` are set once before anything runs.

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
    }

    let loop: EventLoop
    let configuration: AgentConfiguration
    let logger: Logger
    let cache: RouteCacheFile?
    /// Writes the cache file off the loop, in order.
    private let cacheQueue = DispatchQueue(label: "switchyard.agent.route-cache")
    private let updateTimeoutNs: UInt64
    private let retryNs: UInt64
    private let emptyModuleTimeoutNs: UInt64

    var names: FramedClient?
    var reporter: FramedClient?

    // Loop thread only.
    private var modules: [RouteKey: Module] = [:]
    private var unreported: Set<RouteKey> = []
    private var nameServiceDown = false
    private var atModuleLimit = false

    init(loop: EventLoop, configuration: AgentConfiguration, logger: Logger) {
        self.loop = loop
        self.configuration = configuration
        self.logger = logger
        cache = configuration.routeCacheFile.map(RouteCacheFile.init(path:))
        updateTimeoutNs = configuration.balancer.updateTimeout.nanosecondsSaturated
        retryNs = configuration.routeRetryInterval.nanosecondsSaturated
        emptyModuleTimeoutNs = configuration.emptyModuleTimeout.nanosecondsSaturated
    }

    private var now: UInt64 { SystemInfo.monotonicNanoseconds() }

    // MARK: Routes

    /// Installs routes read from the cache file. Loop thread only.
    func loadCachedRoutes(_ routes: [RouteKey: [Host]]) {
        let t = now
        for (key, hosts) in routes {
            modules[key] = Module(balancer: RouteBalancer(settings: configuration.balancer, hosts: hosts, now: t),
                                  hasRoute: true, emptyUsedAt: t)
        }
    }

    /// A GetRouteResponse from the name service, a reply or a push. Loop thread only.
    func routeArrived(_ response: Lars_GetRouteResponse) {
        let key = RouteKey(modid: response.modid, cmdid: response.cmdid)
        let hosts = response.host.compactMap { Host(wireIP: $0.ip, wirePort: $0.port) }
        let t = now
        var module = modules[key] ?? Module(balancer: RouteBalancer(settings: configuration.balancer, now: t))
        let changed = !module.hasRoute || Set(module.balancer.hosts) != Set(hosts)
        // A module that just lost its hosts (or arrives without any) starts its idle time now.
        if hosts.isEmpty && (!module.balancer.hosts.isEmpty || module.emptyUsedAt == 0) { module.emptyUsedAt = t }
        module.balancer.setHosts(hosts, now: t)
        module.hasRoute = true
        module.updatedAt = t
        modules[key] = module
        if changed {
            logger.info("route updated", metadata: ["route": "\(key)", "hosts": "\(hosts.count)"])
            saveCache()
        }
    }

    private func ask(_ key: RouteKey, at t: UInt64) {
        modules[key]?.askedAt = t
        var request = Lars_GetRouteRequest()
        request.modid = key.modid
        request.cmdid = key.cmdid
        _ = names?.send(request, id: MessageID.getRouteRequest)
    }

    /// Connected (or reconnected) to the name service: ask again for every module. Loop thread only.
    func nameServiceConnected() {
        if nameServiceDown { logger.info("name service reachable again") }
        nameServiceDown = false
        let t = now
        for key in modules.keys { ask(key, at: t) }
    }

    func nameServiceLost() {
        if !nameServiceDown {
            logger.warning("name service unreachable; serving known routes",
                           metadata: ["names": "\(configuration.nameServiceHost):\(configuration.nameServicePort)"])
        }
        nameServiceDown = true
    }

    /// Forgets modules without hosts that nobody asked for within `emptyModuleTimeout` (module ids the name
    /// service does not know, typos, probes), then asks again for routes older than update_timeout and for modules
    /// still waiting for a first answer.
    func refreshRoutes() {
        let t = now
        let forgotten = modules.filter { _, m in m.balancer.hosts.isEmpty && t &- m.emptyUsedAt >= emptyModuleTimeoutNs }
        if !forgotten.isEmpty {
            for key in forgotten.keys { modules[key] = nil }
            logger.info("forgot modules without hosts", metadata: [
                "count": "\(forgotten.count)", "idle_s": "\(configuration.emptyModuleTimeout)"])
            saveCache()
        }
        var due: [RouteKey] = []
        for (key, module) in modules {
            if !module.hasRoute || module.updatedAt == 0 {
                if t &- module.askedAt >= retryNs { due.append(key) }
            } else if t &- module.updatedAt >= updateTimeoutNs && t &- module.askedAt >= updateTimeoutNs {
                due.append(key)
            }
        }
        for key in due { ask(key, at: t) }
    }

    private func saveCache() {
        guard let cache else { return }
        var routes: [RouteKey: [Host]] = [:]
        for (key, module) in modules where module.hasRoute { routes[key] = module.balancer.hosts.sorted() }
        let logger = self.logger
        let snapshot = routes
        cacheQueue.async {
            do {
                try cache.save(snapshot)
            } catch {
                logger.warning("cannot save the route cache", metadata: ["file": "\(cache.path)", "error": "\(error)"])
            }
        }
    }

    /// Waits until pending cache writes are on disk. Not on the loop.
    func flushCache() { cacheQueue.sync {} }

    // MARK: Requests

    /// GetHost (id 4, answered with 5) and GetHost by key (id 100, answered with 101 and the same body).
    func getHost(seq: UInt32, modid: Int32, cmdid: Int32, key hashedKey: UInt64?, from peer: UDPPeer) {
        let key = RouteKey(modid: modid, cmdid: cmdid)
        var response = Lars_GetHostResponse()
        response.seq = seq
        response.modid = modid
        response.cmdid = cmdid
        if modules[key]?.hasRoute == true {
            let t = now
            let picked = hashedKey.map { modules[key]!.balancer.pick(key: $0, now: t) } ?? modules[key]!.balancer.pick(now: t)
            switch picked {
            case .host(let host), .probe(let host):
                response.retcode = LarsReturnCode.success
                var info = Lars_HostInfo()
                info.ip = host.wireIP
                info.port = Int32(host.port)
                response.host = info
            case .overloaded:
                response.retcode = LarsReturnCode.overload
            case .empty:
                modules[key]!.emptyUsedAt = now
                response.retcode = LarsReturnCode.notExist
            }
        } else {
            newModule(key)
            response.retcode = LarsReturnCode.notExist
        }
        peer.send(response, id: hashedKey == nil ? MessageID.getHostResponse : MessageID.getHostByKeyResponse)
    }

    func report(_ request: Lars_ReportRequest) {
        let key = RouteKey(modid: request.modid, cmdid: request.cmdid)
        guard modules[key] != nil, let host = Host(wireIP: request.host.ip, wirePort: request.host.port) else { return }
        modules[key]!.balancer.report(host: host, retcode: request.retcode, now: now)
        unreported.insert(key)
    }

    func getRoute(_ request: Lars_GetRouteRequest, from peer: UDPPeer) {
        let key = RouteKey(modid: request.modid, cmdid: request.cmdid)
        var response = Lars_GetRouteResponse()
        response.modid = request.modid
        response.cmdid = request.cmdid
        if let module = modules[key] {
            if module.balancer.hosts.isEmpty { modules[key]!.emptyUsedAt = now }
            response.host = module.balancer.hosts.map {
                var info = Lars_HostInfo()
                info.ip = $0.wireIP
                info.port = Int32($0.port)
                return info
            }
        } else {
            newModule(key)
        }
        peer.send(response, id: MessageID.apiGetRouteResponse)
    }

    /// Starts fetching a module asked for the first time (a known one only has its use stamped). Past
    /// `maxModules` nothing new is kept: the request is answered NOEXIST and the limit logged once per episode.
    private func newModule(_ key: RouteKey) {
        let t = now
        if modules[key] != nil {
            modules[key]!.emptyUsedAt = t
            return
        }
        guard modules.count < configuration.maxModules else {
            if !atModuleLimit {
                atModuleLimit = true
                logger.warning("module limit reached; requests for further modules get NOEXIST",
                               metadata: ["max_modules": "\(configuration.maxModules)"])
            }
            return
        }
        atModuleLimit = false
        var module = Module(balancer: RouteBalancer(settings: configuration.balancer, now: t))
        module.emptyUsedAt = t
        modules[key] = module
        ask(key, at: t)
    }

    // MARK: Reports

    /// Sends one ReportStatusRequest per module with calls since the last flush, and lets unreported calls fade
    /// from the keyed-pick loads. Loop thread only.
    func flushReports() {
        for key in modules.keys { modules[key]!.balancer.decayOutstanding() }
        guard !unreported.isEmpty else { return }
        let ts = UInt32(truncatingIfNeeded: time(nil))
        for key in unreported {
            guard let summary = modules[key]?.balancer.takeReportSummary(), !summary.isEmpty else { continue }
            var request = Lars_ReportStatusRequest()
            request.modid = key.modid
            request.cmdid = key.cmdid
            request.caller = configuration.caller
            request.ts = ts
            request.results = summary.map {
                var r = Lars_HostCallResult()
                r.ip = $0.host.wireIP
                r.port = Int32($0.host.port)
                r.succ = $0.successes
                r.err = $0.errors
                r.overload = $0.overloaded
                return r
            }
            _ = reporter?.send(request, id: MessageID.reportStatusRequest)
        }
        unreported.removeAll(keepingCapacity: true)
    }

    // MARK: Inspection

    /// The state of one module's balancer (nil when unknown). Loop thread only.
    func balancer(for key: RouteKey) -> RouteBalancer? { modules[key]?.balancer }
}
