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
    /// GetHost answers with NOEXIST.
    let notExist = Counter(label: "switchyard_agent_noexist_answers_total", dimensions: [service])
    /// ReportStatusRequests sent to the reporter.
    let reportsSent = Counter(label: "switchyard_agent_reports_sent_total", dimensions: [service])
    /// Modules known.
    let modules = Gauge(label: "switchyard_agent_modules", dimensions: [service])

    /// Adds what `now` counted beyond `before`.
    func publish(_ now: AgentStatistics, since before: AgentStatistics) {
        func add(_ counter: Counter, _ delta: Int) { if delta > 0 { counter.increment(by: delta) } }
        add(getHost, now.getHostRequests - before.getHostRequests)
        add(getHostByKey, now.getHostByKeyRequests - before.getHostByKeyRequests)
        add(report, now.reportRequests - before.reportRequests)
        add(getRoute, now.getRouteRequests - before.getRouteRequests)
        add(notExist, now.notExistAnswers - before.notExistAnswers)
        add(reportsSent, now.reportsSent - before.reportsSent)
        modules.record(now.modules)
    }
}
