import DatabaseAgent
import Glibc
import Logging
import Reactor
import Storage
import SwitchyardCore
import Synchronization

/// Point selects through the database agent against the same pool used directly (issue 19's benchmark): each caller
/// runs `SELECT abalance FROM pgbench_accounts WHERE aid = ?` with a random `aid` in a loop, either on the
/// ``ConnectionPool`` in this process or through an in-process ``DatabaseAgentServer`` over TCP on 127.0.0.1 with the
/// async ``DatabaseAgentClient`` (a named statement). Both sides use one pool of the same size. For every
/// concurrency the two modes alternate for `rounds` rounds (direct first in even rounds, agent first in odd ones),
/// so both see the same load.
///
/// The CLI wires this to `switchyard bench dbagent --db postgres://...` (a database `pgbench -i` filled);
/// `scripts/bench --phases dbagent` runs it beside pgbench through pgbouncer.
public enum DatabaseAgentBenchmark {
    /// What carried the queries.
    public enum Mode: String, Sendable, Codable {
        /// ``ConnectionPool/query(_:_:)`` in this process.
        case direct
        /// The agent over TCP: ``DatabaseAgentClient/execute(statement:_:rowLimit:timeout:)``.
        case agent
    }

    /// The settings of a run.
    public struct Settings: Sendable {
        /// Database URL of a `pgbench -i` database.
        public var url: String
        /// Concurrent callers to measure.
        public var concurrencies: [Int] = [1, 8, 64]
        /// Measured time of one (mode, concurrency, round) cell, after a warm-up of a fifth of it.
        public var duration: Duration = .seconds(3)
        /// Rounds per concurrency (each measures both modes).
        public var rounds: Int = 1
        /// The pool's connections (opened before measuring), on both sides.
        public var poolSize: Int = 8
        /// Client connections to the agent (`nil`: one per 16 callers, the agent's default requests per connection,
        /// at least one per loop so that every loop of the agent serves, at most one per caller).
        public var connections: Int?
        /// I/O loops of the agent: the cores, as `switchyard db-agent`.
        public var loops: Int = SystemInfo.coreCount
        /// I/O loops of the callers' client group (`nil`: as many as the agent's).
        public var clientLoops: Int?
        /// The poller of both groups.
        public var poller: PollerKind = .epoll
        /// How long the agent's loops poll without sleeping after an event (``LoopConfiguration/busyPoll``), as
        /// `switchyard db-agent --busy-poll-us`.
        public var agentBusyPoll: Duration = DatabaseAgentConfiguration.defaultBusyPoll
        /// The agent goes first in even rounds (direct first otherwise).
        public var agentFirst = false

        public init(url: String) { self.url = url }
    }

    /// One measurement.
    public struct Result: Sendable, Hashable, Codable {
        public var mode: Mode
        public var callers: Int
        public var round: Int
        /// Client connections (agent; 0 for direct).
        public var connections: Int
        public var queries: Int
        public var errors: Int
        public var seconds: Double
        public var queriesPerSecond: Double { seconds > 0 ? Double(queries) / seconds : 0 }
        /// Latency percentiles of the measured queries, as the caller saw them, in microseconds.
        public var p50Microseconds: Double
        public var p99Microseconds: Double
        /// CPU time of this process (user + system, every thread: callers, agent, pool) per measured query.
        public var cpuMicrosecondsPerQuery: Double
        /// Context switches of this process (voluntary and not) per measured query.
        public var contextSwitchesPerQuery: Double
    }

    /// CPU microseconds and context switches of the process so far.
    private static func usage() -> (cpu: Double, switches: Double) {
        var r = rusage()
        getrusage(RUSAGE_SELF.rawValue, &r)
        let cpu = Double(r.ru_utime.tv_sec + r.ru_stime.tv_sec) * 1e6 + Double(r.ru_utime.tv_usec + r.ru_stime.tv_usec)
        return (cpu, Double(r.ru_nvcsw + r.ru_nivcsw))
    }

    static let sql = "SELECT abalance FROM pgbench_accounts WHERE aid = ?"
    static let token = "bench-token"

    /// Runs the benchmark and returns one result per (concurrency, round, mode), in the order measured.
    public static func run(_ settings: Settings, logger: Logger) async throws -> [Result] {
        let pool = try ConnectionPool(
            url: settings.url,
            configuration: PoolConfiguration(minConnections: settings.poolSize, maxConnections: settings.poolSize,
                                             acquireTimeout: .seconds(30)),
            logger: logger)
        let agentGroup = try EventLoopGroup(ioLoops: settings.loops, configuration: LoopConfiguration(
            poller: settings.poller, busyPoll: settings.agentBusyPoll), placement: .roundRobin)
        let clientGroup = try EventLoopGroup(ioLoops: settings.clientLoops ?? settings.loops,
                                             configuration: LoopConfiguration(poller: settings.poller),
                                             placement: .roundRobin)
        let rules = try AccessFile.parse("statement point = \(sql)\ntoken \(token) statements=point\n")
        let maxCallers = settings.concurrencies.max() ?? 1
        let agent = DatabaseAgentServer(
            group: agentGroup,
            configuration: DatabaseAgentConfiguration(server: ServerConfiguration(port: 0, maxConnections: 1024),
                                                      maxRequestsInFlight: max(1024, maxCallers)),
            rules: rules, pool: pool, logger: logger)
        do {
            let address = try await runOnDedicatedThread(name: "bench-dbagent-start") {
                Swift.Result { try agent.start() }
            }.get()
            let accounts = try await accountCount(pool)
            var results: [Result] = []
            for callers in settings.concurrencies {
                let connections = settings.connections ?? min(callers, max(settings.loops, (callers + 15) / 16))
                let clients = try await connect(connections, port: Int(address.port), group: clientGroup)
                for round in 0..<settings.rounds {
                    let order: [Mode] = (round % 2 == 1) == settings.agentFirst ? [.direct, .agent]
                        : [.agent, .direct]
                    for mode in order {
                        var result = try await measure(mode, pool: pool, clients: clients, callers: callers,
                                                       accounts: accounts, duration: settings.duration)
                        result.round = round
                        results.append(result)
                    }
                }
                for client in clients { await client.client.close() }
            }
            await stop(agent: agent, pool: pool, groups: [agentGroup, clientGroup])
            return results
        } catch {
            await stop(agent: agent, pool: pool, groups: [agentGroup, clientGroup])
            throw error
        }
    }

    private static func stop(agent: DatabaseAgentServer, pool: ConnectionPool, groups: [EventLoopGroup]) async {
        await runOnDedicatedThread(name: "bench-dbagent-stop") { agent.shutdown() }
        await pool.close()
        await runOnDedicatedThread(name: "bench-dbagent-loops") { for group in groups { group.shutdown() } }
    }

    private static func accountCount(_ pool: ConnectionPool) async throws -> Int64 {
        let result = try await pool.query("SELECT max(aid) FROM pgbench_accounts", [])
        guard case .integer(let count)? = result.rows.first?.values.first, count > 0 else {
            throw BenchmarkSetupError()
        }
        return count
    }

    /// The database has no `pgbench -i` tables.
    public struct BenchmarkSetupError: Error, CustomStringConvertible {
        public var description: String {
            "pgbench_accounts is empty or missing: run `pgbench -i` on the database first"
        }
    }

    private static func connect(_ count: Int, port: Int, group: EventLoopGroup) async throws
        -> [(client: DatabaseAgentClient, loop: EventLoop)]
    {
        var clients: [(client: DatabaseAgentClient, loop: EventLoop)] = []
        for _ in 0..<count {
            let loop = group.next()
            clients.append((try await DatabaseAgentClient.connect(port: port, token: token, loop: loop), loop))
        }
        return clients
    }

    /// `callers` tasks in a loop for a warm-up, then for `duration`; every measured query's latency is kept.
    private static func measure(_ mode: Mode, pool: ConnectionPool,
                                clients: [(client: DatabaseAgentClient, loop: EventLoop)], callers: Int,
                                accounts: Int64, duration: Duration) async throws -> Result {
        let clock = ContinuousClock()
        let warmUpEnd = clock.now.advanced(by: duration / 5)
        let end = warmUpEnd.advanced(by: duration)
        // The process's usage over the measured window (a task that wakes at its start and end).
        let window = Task { () -> (cpu: Double, switches: Double) in
            try? await Task.sleep(until: warmUpEnd, clock: clock)
            let start = usage()
            try? await Task.sleep(until: end, clock: clock)
            let stop = usage()
            return (stop.cpu - start.cpu, stop.switches - start.switches)
        }
        let outcomes = await withTaskGroup(of: (latencies: [Int64], errors: Int).self) { group in
            for caller in 0..<callers {
                let (client, loop) = clients[caller % clients.count]
                // Through the agent a caller runs on its client's loop, as a service on the reactor does: its request
                // leaves from its own thread and the answer resumes it where it was read (no hop either way). The
                // direct callers stay on the global executor (the pool's callers have no loop to prefer).
                let executor: (any TaskExecutor)? = mode == .agent ? loop : nil
                group.addTask(executorPreference: executor) {
                    var random = SplitMix64(seed: UInt64(caller + 1) &* 0x9E37_79B9)
                    var latencies: [Int64] = []
                    latencies.reserveCapacity(4096)
                    var errors = 0
                    while true {
                        let start = clock.now
                        if start >= end { break }
                        let aid = Int64(random.next() % UInt64(accounts)) + 1
                        let ok: Bool
                        switch mode {
                        case .direct:
                            ok = (try? await pool.query(sql, [.integer(aid)]))?.rows.count == 1
                        case .agent:
                            ok = (try? await client.execute(statement: "point", [.integer(aid)]))?.rows.count == 1
                        }
                        guard start >= warmUpEnd else { continue }
                        if ok {
                            let elapsed = clock.now - start
                            latencies.append(elapsed.components.seconds * 1_000_000
                                             + elapsed.components.attoseconds / 1_000_000_000_000)
                        } else {
                            errors += 1
                        }
                    }
                    return (latencies, errors)
                }
            }
            var all: [(latencies: [Int64], errors: Int)] = []
            for await outcome in group { all.append(outcome) }
            return all
        }
        let used = await window.value
        let latencies = outcomes.flatMap(\.latencies).sorted()
        let perQuery = 1 / Double(max(1, latencies.count))
        func percentile(_ p: Double) -> Double {
            guard !latencies.isEmpty else { return 0 }
            return Double(latencies[min(latencies.count - 1, Int(Double(latencies.count) * p))])
        }
        return Result(mode: mode, callers: callers, round: 0, connections: mode == .agent ? clients.count : 0,
                      queries: latencies.count, errors: outcomes.reduce(0) { $0 + $1.errors },
                      seconds: duration.secondsValue, p50Microseconds: percentile(0.50),
                      p99Microseconds: percentile(0.99), cpuMicrosecondsPerQuery: used.cpu * perQuery,
                      contextSwitchesPerQuery: used.switches * perQuery)
    }

    /// The results as an aligned text table, with the ratio agent/direct per concurrency (medians over rounds).
    public static func table(_ results: [Result]) -> String {
        var lines = ["callers  mode     conns   queries/s    p50 us    p99 us  errors  CPU us/q  switches/q"]
        for r in results {
            lines.append(pad(String(r.callers), 7, left: true) + "  " + pad(r.mode.rawValue, 7)
                         + pad(String(r.connections), 6, left: true)
                         + pad(String(Int(r.queriesPerSecond.rounded())), 12, left: true)
                         + pad(String(Int(r.p50Microseconds)), 10, left: true)
                         + pad(String(Int(r.p99Microseconds)), 10, left: true)
                         + pad(String(r.errors), 8, left: true)
                         + pad(String(Int(r.cpuMicrosecondsPerQuery.rounded())), 10, left: true)
                         + pad(String((r.contextSwitchesPerQuery * 10).rounded() / 10), 12, left: true))
        }
        for callers in Array(Set(results.map(\.callers))).sorted() {
            let rounds = Set(results.filter { $0.callers == callers }.map(\.round))
            let ratios = rounds.sorted().compactMap { round -> Double? in
                let cell = results.filter { $0.callers == callers && $0.round == round }
                guard let direct = cell.first(where: { $0.mode == .direct }), direct.queriesPerSecond > 0,
                      let agent = cell.first(where: { $0.mode == .agent }) else { return nil }
                return agent.queriesPerSecond / direct.queriesPerSecond
            }.sorted()
            guard !ratios.isEmpty else { continue }
            let median = ratios[ratios.count / 2]
            lines.append("\(callers) callers: agent/direct \(String(Int((median * 100).rounded())))%")
        }
        return lines.joined(separator: "\n")
    }

    private static func pad(_ text: String, _ width: Int, left: Bool = false) -> String {
        let fill = String(repeating: " ", count: max(0, width - text.count))
        return left ? fill + text : text + fill
    }
}
