import ArgumentParser
import Logging
import Reactor
import ReverseProxy
import ServiceLifecycle

extension TunnelTransfer: ExpressibleByArgument {}
extension ProxyAffinity: ExpressibleByArgument {}
extension ProxyHeaderVersion: ExpressibleByArgument {}

struct ProxyCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "proxy",
        abstract: "Run the reverse proxy: TCP connections relayed to backends picked by the load-balancing agent.",
        discussion: """
            For every new connection the proxy asks the local agent for a host of the route's module, connects \
            (after a failed connect, reported to the agent, it tries the next host), relays bytes both ways and \
            reports the outcome, so failing backends go to overload as for callers that use the agent themselves. \
            One listener per route: --port/--modid/--cmdid, or --route PORT:MODID:CMDID (repeatable).
            """
    )

    @Option(help: "Address to bind.") var host = "0.0.0.0"
    @Option(help: "Port to listen on (with --modid and --cmdid).") var port: Int?
    @Option(help: "Module id of --port's backends.") var modid: Int32?
    @Option(help: "Command id of --port's backends.") var cmdid: Int32?
    @Option(name: .customLong("route"), help: "A listener PORT:MODID:CMDID (repeatable).") var routes: [String] = []
    @Option(help: "The agent's address.") var agentHost = "127.0.0.1"
    @Option(help: "The agent's UDP ports, comma-separated.") var agentPorts = "8888,8889,8890"
    @Option(help: "Milliseconds the agent may take to answer.") var agentTimeoutMs = 500
    @Option(help: "none: the agent's order; client-ip: a client keeps its backend while it has room.")
    var affinity: ProxyAffinity = .none
    @Option(help: "Most client connections at once; more are closed at once.")
    var maxConnections = 10_000
    @Option(help: "Milliseconds a backend may take to accept.") var connectTimeout = 2000
    @Option(help: "Backends tried per connection after failed connects.") var connectAttempts = 3
    @Option(help: "Seconds without a byte either way before a connection is closed (0: never).")
    var idleTimeout = 300.0
    @Option(help: "Seconds open connections may take to finish on SIGTERM.") var drainTimeout = 30.0
    @Option(help: "Send the PROXY protocol header to backends: v1 or v2.") var sendProxy: ProxyHeaderVersion?
    @Option(help: """
        auto: read/write for small reads, splice(2) through pipes (zero copy) once a read fills the buffer; on: \
        always splice; off: always read/write.
        """)
    var splice = "auto"
    @Option(help: "KiB in flight per direction of a connection.") var bufferKib = 64
    @Option(help: "Secret to send with reports, when the agent requires one.") var reportSecret: String?
    @Option(help: """
        Hosts each loop asks the agent for ahead of the connections that use them, per route, at most (the agent's \
        round trip off a new connection's path; still one pick per connection, half of them asked for at once in \
        one batch request; the number follows the connection rate from 4 up to this; not with --affinity \
        client-ip). 0: ask when the client comes.
        """)
    var spareHosts = 32
    @Option(help: "I/O threads.") var loops = 1
    @Option(help: "I/O multiplexer: epoll, poll or select.") var poller: PollerKind = .epoll
    @Option(help: ArgumentHelp("Microseconds an I/O thread polls without sleeping after an event (0: off, the default).",
                               discussion: "A backend's answer or a client's next bytes then find the thread awake "
                                   + "instead of paying a wake-up; the price is CPU while traffic comes."))
    var busyPollUs: Int64 = 0
    @OptionGroup var service: ServiceOptions

    func proxyConfiguration() throws -> ProxyConfiguration {
        var list: [ProxyRoute] = []
        for text in routes {
            guard let route = ProxyRoute(text) else {
                throw ValidationError("--route must be PORT:MODID:CMDID, got \(text)")
            }
            list.append(route)
        }
        switch (port, modid, cmdid) {
        case (nil, nil, nil): break
        case let (port?, modid?, cmdid?): list.append(ProxyRoute(port: port, modid: modid, cmdid: cmdid))
        default: throw ValidationError("--port, --modid and --cmdid go together")
        }
        let ports = agentPorts.split(separator: ",").map { Int($0.filter { $0 != " " }) }
        guard !ports.isEmpty, ports.allSatisfy({ $0 != nil }) else {
            throw ValidationError("--agent-ports must be comma-separated ports, got \(agentPorts)")
        }
        guard ["auto", "on", "off"].contains(splice) else {
            throw ValidationError("--splice must be auto, on or off")
        }
        guard idleTimeout >= 0, idleTimeout.isFinite, drainTimeout >= 0, drainTimeout.isFinite else {
            throw ValidationError("--idle-timeout and --drain-timeout must be seconds, 0 or more")
        }
        return ProxyConfiguration(
            host: host, routes: list, agentHost: agentHost, agentPorts: ports.map { $0! },
            agentTimeout: .milliseconds(agentTimeoutMs), affinity: affinity, maxConnections: maxConnections,
            connectTimeout: .milliseconds(connectTimeout), connectAttempts: connectAttempts,
            idleTimeout: idleTimeout == 0 ? nil : .milliseconds(Int64(idleTimeout * 1000)),
            drainTimeout: .milliseconds(Int64(drainTimeout * 1000)), sendProxy: sendProxy,
            transfer: splice == "on" ? .splice : splice == "off" ? .copy : .auto, bufferBytes: bufferKib << 10,
            reportSecret: reportSecret.map { Array($0.utf8) }, spareHosts: spareHosts)
    }

    func validate() throws {
        guard (1...64).contains(loops) else { throw ValidationError("--loops must be 1...64, got \(loops)") }
        guard (0...1_000_000).contains(busyPollUs) else {
            throw ValidationError("--busy-poll-us must be 0...1000000, got \(busyPollUs)")
        }
        guard (4...16384).contains(bufferKib) else { throw ValidationError("--buffer-kib must be 4...16384") }
        do {
            try proxyConfiguration().validate()
        } catch let error as ValidationError {
            throw error
        } catch {
            throw ValidationError("\(error)")
        }
    }

    func run() async throws {
        service.bootstrapLogging()
        let logger = Logger(label: "switchyard.proxy")
        let configuration = try proxyConfiguration()
        let group = try EventLoopGroup(
            ioLoops: loops, configuration: LoopConfiguration(poller: poller, busyPoll: .microseconds(busyPollUs)),
            logger: logger)
        let proxy = ProxyServer(group: group, configuration: configuration, logger: logger)
        let addresses: [SocketAddress]
        do {
            addresses = try proxy.start()
        } catch {
            await group.shutdown()
            throw CommandFailure("proxy: cannot listen on \(host) (\(configuration.routes)): \(error)")
        }
        let routesText = zip(configuration.routes, addresses).map { "\($1) -> \($0.modid)/\($0.cmdid)" }
        try await runServices(
            [EventLoopGroupService(group: group), proxy],
            announcing: "proxy listening on \(routesText.joined(separator: ", ")) (agent \(agentHost):\(agentPorts), "
                + "\(configuration.transfer))",
            logger: logger)
        let s = proxy.statistics
        logger.info("proxy totals", metadata: [
            "accepted": "\(s.accepted)", "refused": "\(s.refused)", "no_backend": "\(s.noBackend)",
            "reported.successes": "\(s.reportedSuccesses)", "reported.failures": "\(s.reportedFailures)",
            "bytes.client_to_backend": "\(s.clientToBackendBytes)",
            "bytes.backend_to_client": "\(s.backendToClientBytes)",
        ])
    }
}
