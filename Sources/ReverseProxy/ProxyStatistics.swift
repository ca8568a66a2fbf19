#if canImport(Glibc)
import Glibc
#endif
import Dispatch
import LoadBalanceClient
import LoadBalancing
import Logging
import Metrics
import Reactor
import ServiceLifecycle
import SwitchyardCore
import Synchronization

/// swift-metrics counters of a proxy, with the dimension `proxy` (its logger's label).
struct ProxyMetrics: Sendable {
    let accepted: Counter
    let refused: Counter
    let noBackend: Counter
    let reportedSuccesses: Counter
    let reportedFailures: Counter
    let clientToBackendBytes: Counter
    let backendToClientBytes: Counter
    let idleClosed: Counter
    let active: Meter
    let proxy: String
    let factory: MetricsFactory

    init(proxy: String, factory: MetricsFactory) {
        self.proxy = proxy
        self.factory = factory
        let dimensions = [("proxy", proxy)]
        func counter(_ label: String) -> Counter {
            Counter(label: label, dimensions: dimensions,
                    handler: factory.makeCounter(label: label, dimensions: dimensions))
        }
        accepted = counter("switchyard_proxy_accepted_total")
        refused = counter("switchyard_proxy_refused_total")
        noBackend = counter("switchyard_proxy_no_backend_total")
        reportedSuccesses = counter("switchyard_proxy_reported_successes_total")
        reportedFailures = counter("switchyard_proxy_reported_failures_total")
        clientToBackendBytes = counter("switchyard_proxy_client_to_backend_bytes_total")
        backendToClientBytes = counter("switchyard_proxy_backend_to_client_bytes_total")
        idleClosed = counter("switchyard_proxy_idle_closed_total")
        active = Meter(label: "switchyard_proxy_active_connections", dimensions: dimensions,
                       handler: factory.makeMeter(label: "switchyard_proxy_active_connections",
                                                  dimensions: dimensions))
    }

    /// The failed connects of one backend (dimension `backend`, "a.b.c.d:port").
    func connectFailures(_ host: Host) -> Counter {
        let label = "switchyard_proxy_connect_failures_total"
        let dimensions = [("proxy", proxy), ("backend", "\(host)")]
        return Counter(label: label, dimensions: dimensions,
                       handler: factory.makeCounter(label: label, dimensions: dimensions))
    }
}

/// The proxy's counters (any thread): the statistics snapshot's atomics, and the same counts as swift-metrics.
final class ProxyCounters: Sendable {
    let metrics: ProxyMetrics
    private let activeCount = Atomic<Int>(0)
    private let acceptedCount = Atomic<Int>(0)
    private let refusedCount = Atomic<Int>(0)
    private let noBackendCount = Atomic<Int>(0)
    private let successes = Atomic<Int>(0)
    private let failures = Atomic<Int>(0)
    private let clientToBackendBytes = Atomic<UInt64>(0)
    private let backendToClientBytes = Atomic<UInt64>(0)
    private let idleClosed = Atomic<Int>(0)
    private let sparesUsed = Atomic<Int>(0)
    private let connectFailures = Mutex<[Host: (count: Int, counter: Counter)]>([:])

    init(metrics: ProxyMetrics) { self.metrics = metrics }

    var active: Int { activeCount.load(ordering: .acquiring) }

    func opened() {
        activeCount.wrappingAdd(1, ordering: .relaxed)
        acceptedCount.wrappingAdd(1, ordering: .relaxed)
        metrics.accepted.increment()
        metrics.active.increment()
    }

    /// One connection fewer; true when none is left.
    func closed() -> Bool {
        metrics.active.decrement()
        return activeCount.wrappingSubtract(1, ordering: .acquiringAndReleasing).newValue == 0
    }

    func refused() {
        refusedCount.wrappingAdd(1, ordering: .relaxed)
        metrics.refused.increment()
    }

    func noBackend() {
        noBackendCount.wrappingAdd(1, ordering: .relaxed)
        metrics.noBackend.increment()
    }

    func reported(success: Bool) {
        (success ? metrics.reportedSuccesses : metrics.reportedFailures).increment()
        if success {
            successes.wrappingAdd(1, ordering: .relaxed)
        } else {
            failures.wrappingAdd(1, ordering: .relaxed)
        }
    }

    func usedSpare() {
        sparesUsed.wrappingAdd(1, ordering: .relaxed)
    }

    func noteConnectFailure(_ host: Host) {
        let counter = connectFailures.withLock { all -> Counter in
            let counter = all[host]?.counter ?? metrics.connectFailures(host)
            all[host] = ((all[host]?.count ?? 0) + 1, counter)
            return counter
        }
        counter.increment()
    }

    func noteTunnelEnd(_ outcome: TunnelOutcome) {
        clientToBackendBytes.wrappingAdd(outcome.clientToServerBytes, ordering: .relaxed)
        backendToClientBytes.wrappingAdd(outcome.serverToClientBytes, ordering: .relaxed)
        metrics.clientToBackendBytes.increment(by: Int64(clamping: outcome.clientToServerBytes))
        metrics.backendToClientBytes.increment(by: Int64(clamping: outcome.serverToClientBytes))
        if outcome.end == .idleTimeout {
            idleClosed.wrappingAdd(1, ordering: .relaxed)
            metrics.idleClosed.increment()
        }
    }

    func snapshot() -> ProxyStatistics {
        ProxyStatistics(
            active: activeCount.load(ordering: .relaxed), accepted: acceptedCount.load(ordering: .relaxed),
            refused: refusedCount.load(ordering: .relaxed), noBackend: noBackendCount.load(ordering: .relaxed),
            reportedSuccesses: successes.load(ordering: .relaxed), reportedFailures: failures.load(ordering: .relaxed),
            clientToBackendBytes: clientToBackendBytes.load(ordering: .relaxed),
            backendToClientBytes: backendToClientBytes.load(ordering: .relaxed),
            idleClosed: idleClosed.load(ordering: .relaxed),
            connectFailures: connectFailures.withLock { $0.mapValues(\.count) },
            spareHostsUsed: sparesUsed.load(ordering: .relaxed))
    }
}

/// A snapshot of a proxy's counters.
public struct ProxyStatistics: Sendable, Hashable {
    /// Client connections open now (asking, connecting or relaying).
    public var active: Int
    /// Client connections accepted since the start (not counting those refused at the limit).
    public var accepted: Int
    /// Connections closed at once because `maxConnections` were open.
    public var refused: Int
    /// Connections closed because no backend could be had (the agent had none, did not answer, or every host
    /// tried failed to connect).
    public var noBackend: Int
    /// Outcomes reported to the agent.
    public var reportedSuccesses: Int
    public var reportedFailures: Int
    /// Bytes relayed, of connections that have ended.
    public var clientToBackendBytes: UInt64
    public var backendToClientBytes: UInt64
    /// Connections closed by the idle timeout.
    public var idleClosed: Int
    /// Failed connects per backend.
    public var connectFailures: [Host: Int]
    /// Connections that went to a host asked for ahead (``ProxyConfiguration/spareHosts``).
    public var spareHostsUsed: Int = 0
    /// System calls that sent the reports: those of one loop iteration go out together (one `sendmmsg(2)`, at most
    /// `LoopLoadBalanceClient.maxQueuedReports` each), and a Switchyard agent gets report batches (successes held
    /// for `LoopLoadBalanceClient.reportHold`), so this is at most ``reportedSuccesses`` + ``reportedFailures``,
    /// and far fewer when connections end often.
    public var reportBatches: Int = 0
    /// Reports the kernel refused to send (a full socket buffer): the agent never saw them.
    public var reportsDropped: Int = 0
}
