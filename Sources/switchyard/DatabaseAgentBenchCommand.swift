import ArgumentParser
import Logging
import Reactor
import SwitchyardBench

struct DatabaseAgentBenchCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "dbagent",
        abstract: "Point selects through an in-process database agent against the same pool used directly.",
        discussion: """
            The database must hold pgbench's tables (`pgbench -i`); each query is
            `SELECT abalance FROM pgbench_accounts WHERE aid = ?` with a random aid. scripts/bench --phases dbagent
            runs this beside pgbench through pgbouncer.
            """
    )

    @Option(help: "Database URL with pgbench's tables, e.g. postgres://user:pass@127.0.0.1:5432/db")
    var db: String
    @Option(help: "Seconds measured per cell (after a warm-up of a fifth of it).") var seconds = 3
    @Option(help: "Concurrent callers, comma separated.") var callers = "1,8,64"
    @Option(help: "Rounds per concurrency; each measures direct and agent, in alternating order.") var rounds = 1
    @Option(help: "Pool connections (both modes).") var poolSize = 8
    @Option(help: "Client connections to the agent (default: one per 16 callers, one per loop at least).")
    var connections: Int?
    @Option(help: "I/O loops of the agent; default: the cores, as `db-agent --loops`.")
    var loops = SystemInfo.coreCount
    @Option(help: "I/O loops of the callers' client (default: as many as --loops).") var clientLoops: Int?
    @Option(help: "Poller of the agent and the client.") var poller: PollerKind = .epoll
    @Option(help: "Microseconds the agent's loops poll without sleeping after an event (default: as `db-agent`).")
    var busyPollUs: Int64?
    @Flag(help: "Measure the agent first in the first round (direct first otherwise).") var agentFirst = false
    @OptionGroup var output: JSONOutputOption

    /// One row of the `--json` result.
    struct Row: Encodable {
        let mode: String
        let callers: Int
        let round: Int
        let connections: Int
        let queries: Int
        let errors: Int
        let seconds: Double
        let queriesPerSecond: Double
        let p50Us: Double
        let p99Us: Double
        let cpuUsPerQuery: Double
        let contextSwitchesPerQuery: Double
    }

    func validate() throws {
        guard seconds > 0 && seconds <= 600 else { throw ValidationError("--seconds must be 1...600") }
        guard (1...100).contains(rounds) else { throw ValidationError("--rounds must be 1...100") }
        guard (1...1000).contains(poolSize) else { throw ValidationError("--pool-size must be 1...1000") }
        guard (1...64).contains(loops) else { throw ValidationError("--loops must be 1...64") }
        if let clientLoops, !(1...64).contains(clientLoops) {
            throw ValidationError("--client-loops must be 1...64")
        }
        if let busyPollUs, !(0...1_000_000).contains(busyPollUs) {
            throw ValidationError("--busy-poll-us must be 0...1000000")
        }
        if let connections, !(1...1024).contains(connections) {
            throw ValidationError("--connections must be 1...1024")
        }
        guard parsedCallers != nil else { throw ValidationError("--callers must be 1...10000, e.g. 1,8,64") }
    }

    var parsedCallers: [Int]? {
        let list = callers.split(separator: ",").compactMap { Int($0.trimmingCharacters(in: .whitespaces)) }
        return list.isEmpty || list.contains { !(1...10_000).contains($0) } ? nil : list
    }

    func run() async throws {
        var logger = Logger(label: "switchyard.bench.dbagent")
        logger.logLevel = .warning
        var settings = DatabaseAgentBenchmark.Settings(url: db)
        settings.concurrencies = parsedCallers ?? [1, 8, 64]
        settings.duration = .seconds(seconds)
        settings.rounds = rounds
        settings.poolSize = poolSize
        settings.connections = connections
        settings.loops = loops
        settings.clientLoops = clientLoops
        settings.poller = poller
        if let busyPollUs { settings.agentBusyPoll = .microseconds(busyPollUs) }
        settings.agentFirst = agentFirst
        let results = try await DatabaseAgentBenchmark.run(settings, logger: logger)
        if output.json {
            try output.emit(results.map {
                Row(mode: $0.mode.rawValue, callers: $0.callers, round: $0.round, connections: $0.connections,
                    queries: $0.queries, errors: $0.errors, seconds: $0.seconds,
                    queriesPerSecond: $0.queriesPerSecond, p50Us: $0.p50Microseconds, p99Us: $0.p99Microseconds,
                    cpuUsPerQuery: $0.cpuMicrosecondsPerQuery, contextSwitchesPerQuery: $0.contextSwitchesPerQuery)
            })
        } else {
            print(DatabaseAgentBenchmark.table(results))
        }
    }
}
