import Metrics

/// The agent's counters in swift-metrics (exported by whatever backend the executable bootstraps; with none they
/// cost nothing). The request path counts into `AgentStatistics` (plain integers in the core); the report timer
/// publishes the difference here once per interval, so no metrics call sits on the request path.
struct AgentMetrics: Sendable {
    private static let service = ("service", "agent")
    let getHost = Counter(label: "switchyard_agent_requests_total", dimensions: [service, ("kind", "get_host")])
    let getHostByKey = Counter(label: "switchyard_agent_requests_total",
                               dimensions: [service, ("kind", "get_host_by_key")])
    let report = Counter(label: "switchyard_agent_requests_total", dimensions: [service, ("kind", "report")])
    let getRoute = Counter(label: "switchyard_agent_requests_total", dimensions: [service, ("kind", "get_route")])
    let batch = Counter(label: "switchyard_agent_requests_total", dimensions: [service, ("kind", "get_host_batch")])
    let reportBatch = Counter(label: "switchyard_agent_requests_total",
                              dimensions: [service, ("kind", "report_batch")])
    /// Batches refused (too many items, or none), GetHost and report batches apart.
    let batchesRefused = Counter(label: "switchyard_agent_batches_refused_total", dimensions: [service])
    let reportBatchesRefused = Counter(label: "switchyard_agent_report_batches_refused_total", dimensions: [service])
    /// GetHost answers with NOEXIST.
    let notExist = Counter(label: "switchyard_agent_noexist_answers_total", dimensions: [service])
    /// ReportStatusRequests sent to the reporter.
    let reportsSent = Counter(label: "switchyard_agent_reports_sent_total", dimensions: [service])
    /// Modules known.
    let modules = Gauge(label: "switchyard_agent_modules", dimensions: [service])
    /// Requests for unknown modules refused by their source's token bucket.
    let unknownModulesThrottled = Counter(label: "switchyard_agent_unknown_modules_throttled_total",
                                          dimensions: [service])
    /// Modules without hosts evicted at the module limit, and new modules refused there.
    let modulesEvicted = Counter(label: "switchyard_agent_modules_evicted_total", dimensions: [service])
    let newModulesRefused = Counter(label: "switchyard_agent_new_modules_refused_total", dimensions: [service])
    /// Datagrams from sources that are not allowed, and reports without the secret.
    let remoteDatagramsDropped = Counter(label: "switchyard_agent_remote_datagrams_dropped_total",
                                         dimensions: [service])
    let reportsRejected = Counter(label: "switchyard_agent_reports_rejected_total", dimensions: [service])
    /// API GetRoute replies cut to one datagram.
    let routeRepliesTruncated = Counter(label: "switchyard_agent_route_replies_truncated_total",
                                        dimensions: [service])
    /// Route cache snapshots handed to the writer.
    let cacheSnapshots = Counter(label: "switchyard_agent_route_cache_snapshots_total", dimensions: [service])

    /// Adds what `now` counted beyond `before`.
    func publish(_ now: AgentStatistics, since before: AgentStatistics) {
        func add(_ counter: Counter, _ delta: Int) { if delta > 0 { counter.increment(by: delta) } }
        add(getHost, now.getHostRequests - before.getHostRequests)
        add(getHostByKey, now.getHostByKeyRequests - before.getHostByKeyRequests)
        add(report, now.reportRequests - before.reportRequests)
        add(getRoute, now.getRouteRequests - before.getRouteRequests)
        add(notExist, now.notExistAnswers - before.notExistAnswers)
        add(reportsSent, now.reportsSent - before.reportsSent)
        add(unknownModulesThrottled, now.unknownModulesThrottled - before.unknownModulesThrottled)
        add(modulesEvicted, now.modulesEvicted - before.modulesEvicted)
        add(newModulesRefused, now.newModulesRefused - before.newModulesRefused)
        add(remoteDatagramsDropped, now.remoteDatagramsDropped - before.remoteDatagramsDropped)
        add(reportsRejected, now.reportsRejected - before.reportsRejected)
        add(routeRepliesTruncated, now.routeRepliesTruncated - before.routeRepliesTruncated)
        add(cacheSnapshots, now.cacheSnapshots - before.cacheSnapshots)
        add(batch, now.batchRequests - before.batchRequests)
        add(batchesRefused, now.batchesRefused - before.batchesRefused)
        add(reportBatch, now.reportBatchRequests - before.reportBatchRequests)
        add(reportBatchesRefused, now.reportBatchesRefused - before.reportBatchesRefused)
        modules.record(now.modules)
    }
}
