import ArgumentParser
import LoadBalanceAgent
import Logging
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
    var api: LoadBalanceBenchmark.API = .async

    func validate() throws {
        guard seconds > 0 && seconds <= 3600 else { throw ValidationError("--seconds must be 1...3600") }
        guard threads > 0 && threads <= 64 else { throw ValidationError("--threads must be 1...64") }
    }

    func run() async throws {
        let logger = Logger(label: "switchyard.bench.lb", factory: { _ in SwiftLogNoOpLogHandler() })
        announce("lb: \(threads) \(api) client(s), \(seconds) s, GetHost + Report through an in-process agent")
        let result = try await LoadBalanceBenchmark.run(seconds: seconds, clients: threads, api: api, poller: poller,
                                                        logger: logger) { second, calls in
            announce("second \(second): \(calls) calls/s")
        }
        announce("total: \(result.calls) calls in \(format2(result.seconds)) s = \(Int(result.callsPerSecond)) calls/s"
                 + " (\(result.failures) not SUCC; reporter got \(result.reportStatusRequests) reports"
                 + " covering \(result.reportedCalls) calls)")
    }
}

extension LoadBalanceBenchmark.API: ExpressibleByArgument {}
