#if canImport(Glibc)
import Glibc
#endif
import LarsProtocol
import LoadBalancing
import Logging
import Messaging
import Reactor
import SwitchyardCore

/// The agent's loop-bound half: the `AgentCore`, the links its actions go through (the name service and reporter
/// clients, the route cache writer, the logger, the metrics), and the performing of those actions.
///
/// Each input reads the clock once, hands it to the core with the one action buffer, and performs what the core
/// appended, in order. A perform that calls back in (a send that fails and closes the name service connection, whose
/// callback reports the loss) only appends: the outer call performs those actions too, after the current ones.
///
/// Loop thread only (the agent's loop): every handler, timer and client callback of the agent runs there, and each
/// entry asserts it, so the request path takes no lock.
final class AgentLoopState: @unchecked Sendable {
    // @unchecked Sendable: the mutable state is touched on `loop` only (`assertInLoopThread` at every entry);
    // the links are installed by a task posted to the loop before any datagram or callback can reach it.
    typealias Core = AgentCore<UDPPeer>

    let loop: EventLoop
    private let logger: Logger
    private let metrics: AgentMetrics
    let cacheWriter: RouteCacheWriter?
    private var core: Core
    private var actions: [Core.Action] = []
    private var performing = false
    private var names: FramedClient?
    private var reporter: FramedClient?
    private var published = AgentStatistics()

    init(loop: EventLoop, configuration: AgentConfiguration, logger: Logger) {
        self.loop = loop
        self.logger = logger
        metrics = AgentMetrics()
        cacheWriter = configuration.routeCacheFile.map {
            RouteCacheWriter(file: RouteCacheFile(path: $0), logger: logger)
        }
        core = Core(configuration: configuration)
        actions.reserveCapacity(8)
    }

    private var now: UInt64 { SystemInfo.monotonicNanoseconds() }

    // MARK: Inputs

    /// Installs the links and the routes of the cache file, before any request.
    func install(names: FramedClient, reporter: FramedClient, cachedRoutes: [RouteKey: CachedRoute]) {
        loop.assertInLoopThread()
        self.names = names
        self.reporter = reporter
        core.loadCachedRoutes(cachedRoutes, now: now)
    }

    /// Forgets the links at shutdown: the name service client's router holds this state (its route callback), so
    /// a state that kept the client would keep itself, the client and the loop for good.
    func uninstall() {
        loop.assertInLoopThread()
        names = nil
        reporter = nil
    }

    /// Feeds the core a request datagram of `peer`, when its source is allowed (a refusal is counted and logged by
    /// the core), and performs what it decided.
    @inline(__always)
    private func serve(_ peer: UDPPeer, _ feed: (inout Core, _ now: UInt64, inout [Core.Action]) -> Void) {
        loop.assertInLoopThread()
        let now = self.now
        if core.admit(source: peer.address.ip, now: now, actions: &actions) { feed(&core, now, &actions) }
        performActions()
    }

    /// Feeds the core something of the loop's own (a link, a timer) and performs what it decided.
    private func decide(_ feed: (inout Core, _ now: UInt64, inout [Core.Action]) -> Void) {
        loop.assertInLoopThread()
        feed(&core, now, &actions)
        performActions()
    }

    func getHost(seq: UInt32, modid: Int32, cmdid: Int32, key: UInt64?, from peer: UDPPeer) {
        serve(peer) {
            $0.getHost(seq: seq, modid: modid, cmdid: cmdid, key: key, from: peer, source: peer.address.ip, now: $1,
                       actions: &$2)
        }
    }

    func getHostBatch(_ request: Switchyard_Lb_GetHostBatchRequest, from peer: UDPPeer) {
        serve(peer) { $0.getHostBatch(request, from: peer, source: peer.address.ip, now: $1, actions: &$2) }
    }

    func report(_ request: Lars_ReportRequest, from peer: UDPPeer) {
        let secret = core.configuration.reportSecret == nil
            ? nil : ReportSecret.extract(from: request.unknownFields.data)
        serve(peer) { $0.report(request, secret: secret, source: peer.address.ip, now: $1, actions: &$2) }
    }

    func reportBatch(_ request: Lars_ReportStatusRequest, from peer: UDPPeer) {
        let secret = core.configuration.reportSecret == nil
            ? nil : ReportSecret.extract(from: request.unknownFields.data)
        serve(peer) { $0.reportBatch(request, secret: secret, source: peer.address.ip, now: $1, actions: &$2) }
    }

    func getRoute(_ request: Lars_GetRouteRequest, from peer: UDPPeer) {
        serve(peer) { $0.getRoute(request, from: peer, source: peer.address.ip, now: $1, actions: &$2) }
    }

    func routeArrived(_ response: Lars_GetRouteResponse) {
        decide { $0.routeArrived(response, now: $1, actions: &$2) }
    }

    func nameServiceConnected() {
        decide { $0.nameServiceConnected(now: $1, actions: &$2) }
    }

    func nameServiceLost() {
        decide { core, _, actions in core.nameServiceLost(actions: &actions) }
    }

    /// The refresh timer: forget empty modules, ask for stale routes.
    func refreshRoutes() {
        decide { $0.refreshRoutes(now: $1, actions: &$2) }
    }

    /// The cache timer (and shutdown): hands the writer a snapshot of the routes when one with hosts changed.
    func saveCacheIfChanged() {
        loop.assertInLoopThread()
        guard let cacheWriter, let routes = core.takeCacheSnapshot() else { return }
        cacheWriter.submit(routes)
    }

    /// The report timer (and shutdown): send the aggregated reports, publish the counters.
    func flushReports() {
        loop.assertInLoopThread()
        core.flushReports(timestamp: UInt32(truncatingIfNeeded: time(nil)), actions: &actions)
        performActions()
        let statistics = core.statistics
        metrics.publish(statistics, since: published)
        published = statistics
    }

    // MARK: Inspection

    func balancer(for key: RouteKey) -> RouteBalancer? {
        loop.assertInLoopThread()
        return core.balancer(for: key)
    }

    var statistics: AgentStatistics {
        loop.assertInLoopThread()
        return core.statistics
    }

    // MARK: Actions

    private func performActions() {
        guard !performing else { return }  // called back from a perform below: that loop takes these actions too
        performing = true
        var index = 0
        while index < actions.count {
            perform(actions[index])
            index += 1
        }
        actions.removeAll(keepingCapacity: true)
        performing = false
    }

    private func perform(_ action: Core.Action) {
        switch action {
        case .replyHost(let response, let byKey, let peer):
            peer.send(response, id: byKey ? MessageID.getHostByKeyResponse : MessageID.getHostResponse)
        case .replyBatch(let response, let peer):
            peer.send(response, id: MessageID.getHostBatchResponse)
        case .replyRoute(let response, let peer):
            peer.send(response, id: MessageID.apiGetRouteResponse)
        case .askNameService(let request):
            _ = names?.send(request, id: MessageID.getRouteRequest)
        case .sendReport(let request):
            _ = reporter?.send(request, id: MessageID.reportStatusRequest)
        case .log(let event):
            log(event)
        }
    }

    private func log(_ event: AgentEvent) {
        let configuration = core.configuration
        switch event {
        case .routeUpdated(let key, let hostCount):
            logger.info("route updated", metadata: ["route.key": "\(key)", "route.hosts": "\(hostCount)"])
        case .nameServiceReachable:
            logger.info("name service reachable again")
        case .nameServiceUnreachable:
            logger.info("name service unreachable; serving known routes", metadata: [
                "names.address": "\(configuration.nameServiceHost):\(configuration.nameServicePort)"])
        case .forgotEmptyModules(let count):
            logger.info("forgot modules without hosts", metadata: [
                "modules.forgotten": "\(count)", "modules.idle": "\(configuration.emptyModuleTimeout)"])
        case .moduleLimitReached:
            logger.info("module limit reached and every module has hosts; requests for further modules get NOEXIST",
                        metadata: ["modules.max": "\(configuration.maxModules)"])
        case .unknownModulesThrottled(let source):
            logger.info("requests for unknown modules rate limited; answered NOEXIST without asking the name service",
                        metadata: ["peer.address": "\(IPv4Endpoint(ip: source, port: 0).address)",
                                   "limit.rate": "\(configuration.unknownModuleRate)",
                                   "limit.burst": "\(configuration.unknownModuleBurst)"])
        case .remoteSourceDropped(let source):
            logger.info("datagrams from a source that is not allowed dropped (see --allow-remote)",
                        metadata: ["peer.address": "\(IPv4Endpoint(ip: source, port: 0).address)"])
        case .reportsWithoutSecret(let source):
            logger.info("reports without the report secret dropped",
                        metadata: ["peer.address": "\(IPv4Endpoint(ip: source, port: 0).address)"])
        case .reportBatchRefused(let source, let results, let reports):
            logger.info("report batches over the bounds dropped", metadata: [
                "peer.address": "\(IPv4Endpoint(ip: source, port: 0).address)", "batch.results": "\(results)",
                "batch.reports": "\(reports)", "limit.results": "\(Core.maxReportBatchResults)",
                "limit.reports": "\(Core.maxReportsPerBatch)"])
        case .routeReplyTruncated(let key, let hostCount, let sent):
            logger.info("route has more hosts than fit in one datagram; GetRoute answered with those that fit",
                        metadata: ["route.key": "\(key)", "route.hosts": "\(hostCount)", "reply.hosts": "\(sent)"])
        }
    }
}
