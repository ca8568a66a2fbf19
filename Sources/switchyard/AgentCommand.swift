import ArgumentParser
import Foundation
import LoadBalanceAgent
import Logging
import Reactor
import ServiceLifecycle

struct AgentCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "agent",
        abstract: "The load-balancing agent: GetHost, Report and GetRoute over UDP on three ports.",
        discussion: """
            Settings come from the defaults, then --config FILE (key = value lines with the keys of the flags below \
            in Lars spelling: probe_num, err_rate, idle_timeout, names, ports, ...), then the flags.
            """
    )

    @Option(help: """
        Address to bind (default 127.0.0.1). 0.0.0.0 binds every address, as Lars's agent does; with \
        --allow-remote the agent then trusts everyone on its network with its routes and reports.
        """)
    var host: String?
    @Option(help: "The three UDP ports, comma-separated (default 8888,8889,8890; 0: the kernel picks).")
    var ports: String?
    @Option(help: """
        Name service HOST:PORT (default 127.0.0.1:7778), or several comma-separated (replicas on one database, \
        tried in turn when one is lost or silent).
        """) var names: String?
    @Option(help: "Reporter HOST:PORT (default 127.0.0.1:7779), or several comma-separated.") var reporter: String?
    @Option(help: """
        Milliseconds a name service or reporter may stay silent (not answering heartbeats) before the next one is \
        tried (default 3000; 0: wait for a silent one, for servers that do not answer heartbeats).
        """) var upstreamSilenceMs: Int?
    @Option(help: "File the routes are saved to and loaded from at start.") var routeCache: String?
    @Option(help: "A configuration file (key = value).") var config: String?
    @Option(help: "Milliseconds between aggregated reports of a module (default 1000).") var reportIntervalMs: Int?
    @Option(help: """
        The caller of reports, an IPv4 address or a number (default: this machine's primary IPv4 address, the \
        default route's).
        """)
    var caller: String?
    @Option(help: "Microseconds the loop keeps polling after a request before sleeping (default 50; 0: off).")
    var busyPollUs: Int64?
    @Option(help: "Seconds after which a module without hosts that nobody asks for is forgotten (default 60).")
    var emptyModuleTimeout: Double?
    @Option(help: "Most modules kept; a new one evicts the oldest that never had hosts (default 100000).")
    var maxModules: Int?
    @Option(help: "Most services one batch GetHost (id 104) may ask for; more are refused (default 32, max 512).")
    var maxBatch: Int?
    @Option(help: "Seconds between writes of the route cache file, written only when a route changed (default 5).")
    var routeCacheInterval: Double?
    @Option(help: "Requests for unknown modules allowed per second and source address (default 100).")
    var unknownModuleRate: Double?
    @Option(help: "Burst of requests for unknown modules allowed per source address (default 200).")
    var unknownModuleBurst: Int?
    @Flag(help: "Answer datagrams from any source address (default: only 127.0.0.0/8).") var allowRemote = false
    @Option(help: "A secret every report (id 6) must carry (field 15 of its body); others are dropped.")
    var reportSecret: String?

    @Option(help: "Every N-th request probes an overloaded host (default 10).") var probeNum: Int?
    @Option(help: "Virtual successes of an idle host (default 180).") var initSuccCnt: UInt32?
    @Option(help: "Virtual errors of an overloaded host (default 5).") var initErrCnt: UInt32?
    @Option(help: "Virtual error rate above which an idle host is overloaded (default 0.1).") var errRate: Double?
    @Option(help: "Virtual success rate above which an overloaded host is idle again (default 0.92).")
    var succRate: Double?
    @Option(help: "Consecutive errors that overload an idle host (default 10).") var continErrLimit: UInt32?
    @Option(help: "Consecutive successes that bring an overloaded host back (default 10).") var continSuccLimit: UInt32?
    @Option(help: "Real error rate over an idle window that overloads a host (default 0.7).") var windowErrRate: Double?
    @Option(help: "Seconds of an idle host's window (default 15).") var idleTimeout: Double?
    @Option(help: "Seconds after which an overloaded host is forced back to idle (default 15).")
    var overloadTimeout: Double?
    @Option(help: "Seconds after which a module's route is asked for again (default 15).") var updateTimeout: Double?

    @Option(help: "I/O multiplexer: epoll, poll or select.") var poller: PollerKind = .epoll
    @OptionGroup var service: ServiceOptions

    func makeConfiguration() throws -> AgentConfiguration {
        var configuration = AgentConfiguration()
        if let config {
            let text: String
            do {
                text = try String(contentsOfFile: config, encoding: .utf8)
            } catch {
                throw ValidationError("--config \(config): \(error.localizedDescription)")
            }
            do {
                try configuration.apply(configurationText: text)
            } catch {
                throw ValidationError("--config \(config): \(error)")
            }
        }
        let flags: [(String, String, String?)] = [
            ("--host", "host", host), ("--ports", "ports", ports), ("--names", "names", names),
            ("--reporter", "reporter", reporter), ("--route-cache", "route_cache", routeCache),
            ("--upstream-silence-ms", "upstream_silence_ms", upstreamSilenceMs.map(String.init)),
            ("--report-interval-ms", "report_interval_ms", reportIntervalMs.map(String.init)),
            ("--caller", "caller", caller),
            ("--busy-poll-us", "busy_poll_us", busyPollUs.map(String.init)),
            ("--empty-module-timeout", "empty_module_timeout", emptyModuleTimeout.map { "\($0)" }),
            ("--max-modules", "max_modules", maxModules.map(String.init)),
            ("--max-batch", "max_batch", maxBatch.map(String.init)),
            ("--route-cache-interval", "route_cache_interval", routeCacheInterval.map { "\($0)" }),
            ("--unknown-module-rate", "unknown_module_rate", unknownModuleRate.map { "\($0)" }),
            ("--unknown-module-burst", "unknown_module_burst", unknownModuleBurst.map(String.init)),
            ("--allow-remote", "allow_remote", allowRemote ? "true" : nil),
            ("--report-secret", "report_secret", reportSecret),
            ("--probe-num", "probe_num", probeNum.map(String.init)),
            ("--init-succ-cnt", "init_succ_cnt", initSuccCnt.map(String.init)),
            ("--init-err-cnt", "init_err_cnt", initErrCnt.map(String.init)),
            ("--err-rate", "err_rate", errRate.map { "\($0)" }),
            ("--succ-rate", "succ_rate", succRate.map { "\($0)" }),
            ("--contin-err-limit", "contin_err_limit", continErrLimit.map(String.init)),
            ("--contin-succ-limit", "contin_succ_limit", continSuccLimit.map(String.init)),
            ("--window-err-rate", "window_err_rate", windowErrRate.map { "\($0)" }),
            ("--idle-timeout", "idle_timeout", idleTimeout.map { "\($0)" }),
            ("--overload-timeout", "overload_timeout", overloadTimeout.map { "\($0)" }),
            ("--update-timeout", "update_timeout", updateTimeout.map { "\($0)" }),
        ]
        for (flag, key, value) in flags {
            guard let value else { continue }
            if let problem = configuration.apply(key: key, value: value) {
                throw ValidationError("\(flag) \(value): \(problem)")
            }
        }
        do {
            try configuration.validate()
        } catch {
            throw ValidationError("\(error)")
        }
        return configuration
    }

    func validate() throws { _ = try makeConfiguration() }

    func run() async throws {
        service.bootstrapLogging()
        let logger = Logger(label: "switchyard.agent")
        let configuration = try makeConfiguration()
        let group = try EventLoopGroup(ioLoops: 1, configuration: LoopConfiguration(
            poller: poller, busyPoll: configuration.busyPoll), logger: logger)
        let agent = LoadBalanceAgent(group: group, configuration: configuration, logger: logger)
        let addresses: [SocketAddress]
        do {
            addresses = try agent.start()
        } catch {
            await group.shutdown()
            throw CommandFailure("agent: cannot start: \(error)")
        }
        try await runServices(
            [EventLoopGroupService(group: group), agent],
            announcing: "agent listening on udp \(addresses.map(\.description).joined(separator: ",")) "
                + "(names \(configuration.nameServiceEndpoints.map(\.description).joined(separator: ",")), "
                + "reporter \(configuration.reporterEndpoints.map(\.description).joined(separator: ",")))",
            logger: logger)
    }
}
