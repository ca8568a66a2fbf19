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
    @Option(help: "Microseconds the agent's loop polls after a request before sleeping.") var agentBusyPollUs: Int64 = 50
    @Option(help: "Microseconds a blocking client polls for the reply before sleeping.") var clientSpinUs: Int64 = 50
    @OptionGroup var output: JSONOutputOption

    /// The `--json` result.
    struct Summary: Encodable {
        let api: String
        let clients: Int
        let calls: Int
        let seconds: Double
        let callsPerSecond: Double
        let notSuccess: Int
        let reportStatusRequests: Int
        let reportedCalls: Int
    }

    func validate() throws {
        guard seconds > 0 && seconds <= 3600 else { throw ValidationError("--seconds must be 1...3600") }
        guard threads > 0 && threads <= 64 else { throw ValidationError("--threads must be 1...64") }
        for (flag, v) in [("--agent-busy-poll-us", agentBusyPollUs), ("--client-spin-us", clientSpinUs)]
        where !(0...1_000_000).contains(v) {
            throw ValidationError("\(flag) must be 0...1000000")
        }
    }

    func run() async throws {
        let logger = Logger(label: "switchyard.bench.lb", factory: { _ in SwiftLogNoOpLogHandler() })
        let json = output.json
        if !json { announce("lb: \(threads) \(api) client(s), \(seconds) s, GetHost + Report through an in-process agent") }
        let result = try await LoadBalanceBenchmark.run(seconds: seconds, clients: threads, api: api, poller: poller,
                                                        agentBusyPoll: .microseconds(agentBusyPollUs),
                                                        clientSpin: .microseconds(clientSpinUs), logger: logger) { second, calls in
            if !json { announce("second \(second): \(calls) calls/s") }
        }
        if json {
            return try output.emit(Summary(
                api: "\(api)", clients: threads, calls: result.calls, seconds: result.seconds,
                callsPerSecond: result.callsPerSecond, notSuccess: result.failures,
                reportStatusRequests: result.reportStatusRequests, reportedCalls: result.reportedCalls))
        }
        announce("total: \(result.calls) calls in \(format2(result.seconds)) s = \(Int(result.callsPerSecond)) calls/s"
                 + " (\(result.failures) not SUCC; reporter got \(result.reportStatusRequests) reports"
                 + " covering \(result.reportedCalls) calls)")
    }
}

extension LoadBalanceBenchmark.API: ExpressibleByArgument {}
