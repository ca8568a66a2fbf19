import ArgumentParser
import LoadBalanceAgent
import LoadBalanceClient
import Logging
import SwitchyardBench
import Reactor

struct LBBenchCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "lb",
        abstract: "GetHost + Report calls per second through an in-process agent (UDP, client API, reporting on)."
    )

    @Option(help: "Seconds to run.") var seconds = 5
    @Option(help: "Concurrent clients (each its own socket and loop thread).") var threads = 1
    @Option(help: "Poller of the agent and the clients.") var poller: PollerKind = .epoll
    @Option(help: "Client API: async (LoadBalanceClient from tasks) or blocking (BlockingLoadBalanceClient, a thread each).")
    var api: LoadBalanceBenchmark.API = .blocking
    @Option(help: "Services per call: above 1, each call is one batch GetHost (ids 104/105) for that many services.")
    var batch = 1
    @Option(help: "Microseconds the agent's loop polls after a request before sleeping.") var agentBusyPollUs: Int64 = 50
    @Option(help: "Microseconds a blocking client polls for the reply before sleeping.") var clientSpinUs: Int64 = 50
    @Option(help: """
        Stop the agent's name service after this many seconds: the agent has two (replicas) and fails over to the \
        other; prints calls/s before, in that second and after.
        """)
    var failoverAt: Int?
    @OptionGroup var output: JSONOutputOption

    /// The `--json` result.
    struct Summary: Encodable {
        let api: String
        let clients: Int
        let batch: Int
        let calls: Int
        let seconds: Double
        let callsPerSecond: Double
        let servicesPerSecond: Double
        let notSuccess: Int
        let reportStatusRequests: Int
        let reportedCalls: Int
        let perSecond: [Int]
        let failoverBefore: Double?
        let failoverDuring: Double?
        let failoverAfter: Double?
    }

    func validate() throws {
        guard seconds > 0 && seconds <= 3600 else { throw ValidationError("--seconds must be 1...3600") }
        guard threads > 0 && threads <= 64 else { throw ValidationError("--threads must be 1...64") }
        if let failoverAt, seconds < 3 || !(1...(seconds - 2)).contains(failoverAt) {
            throw ValidationError("--failover-at must be 1...seconds-2, so there is a second before and after")
        }
        guard (1...AgentConfiguration.maxBatchItemsLimit).contains(batch) else {
            throw ValidationError("--batch must be 1...\(AgentConfiguration.maxBatchItemsLimit)")
        }
        for (flag, v) in [("--agent-busy-poll-us", agentBusyPollUs), ("--client-spin-us", clientSpinUs)]
        where !(0...1_000_000).contains(v) {
            throw ValidationError("\(flag) must be 0...1000000")
        }
    }

    func run() async throws {
        let logger = Logger(label: "switchyard.bench.lb", factory: { _ in SwiftLogNoOpLogHandler() })
        let json = output.json
        if !json { announce("lb: \(threads) \(api) client(s), \(seconds) s, GetHost + Report through an in-process agent") }
        let result = try await LoadBalanceBenchmark.run(seconds: seconds, clients: threads, api: api, batch: batch,
                                                        poller: poller,
                                                        agentBusyPoll: .microseconds(agentBusyPollUs),
                                                        clientSpin: .microseconds(clientSpinUs),
                                                        failoverAt: failoverAt, logger: logger) { second, calls in
            if !json { announce("second \(second): \(calls) calls/s") }
        }
        if json {
            return try output.emit(Summary(
                api: "\(api)", clients: threads, batch: batch, calls: result.calls, seconds: result.seconds,
                callsPerSecond: result.callsPerSecond, servicesPerSecond: result.servicesPerSecond,
                notSuccess: result.failures,
                reportStatusRequests: result.reportStatusRequests, reportedCalls: result.reportedCalls,
                perSecond: result.perSecond, failoverBefore: result.failover?.before,
                failoverDuring: result.failover?.during, failoverAfter: result.failover?.after))
        }
        if let failover = result.failover {
            announce("failover: \(Int(failover.before)) calls/s before, \(Int(failover.during)) in the second the name "
                     + "service stopped, \(Int(failover.after)) after")
        }
        announce("total: \(result.calls) calls in \(format2(result.seconds)) s = \(Int(result.callsPerSecond)) calls/s"
                 + (batch > 1 ? ", \(Int(result.servicesPerSecond)) services/s (\(batch) per call)" : "")
                 + " (\(result.failures) not SUCC; reporter got \(result.reportStatusRequests) reports"
                 + " covering \(result.reportedCalls) calls)")
    }
}

extension LoadBalanceBenchmark.API: ExpressibleByArgument {}
