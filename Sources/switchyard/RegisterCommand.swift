import ArgumentParser
import LoadBalanceClient
import LoadBalancing
import Logging
import NameService
import Reactor
import ServiceLifecycle

struct RegisterCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "register",
        abstract: "Register a host for a route with the name service, with a time to live, until stopped.",
        discussion: """
            The host is served to agents next to the hosts of RouteData while this command runs (it re-registers \
            every third of --ttl); on SIGINT/SIGTERM the registration is taken back at once; if the process dies, \
            the host leaves the route when the ttl runs out. The database is not written.
            """
    )

    @Option(help: "Module id.") var modid: Int32
    @Option(help: "Command id.") var cmdid: Int32
    @Option(help: "The host's IPv4 address.") var ip: String
    @Option(help: "The host's port.") var port: Int
    @Option(help: "Seconds the registration lives without a heartbeat (at least 0.3).") var ttl = 10.0
    @Option(help: "Name service HOST:PORT, or its replicas comma-separated (tried in turn).")
    var names = "127.0.0.1:7778"
    @Option(help: "The module's owner token, when the name service has one for it (`switchyard route token`).")
    var token: String?
    @Option(help: "The host's weight, 0...10000: its share of the route's picks (0 drains it).")
    var weight: Int = 1
    @OptionGroup var service: ServiceOptions

    func validate() throws {
        guard Host(address: ip, port: port) != nil, (1...65535).contains(port) else {
            throw ValidationError("--ip must be an IPv4 address and --port 1...65535, got \(ip):\(port)")
        }
        guard ttl >= 0.3 && ttl <= 3600 else { throw ValidationError("--ttl must be 0.3...3600 seconds") }
        guard HostWeight.isValid(weight) else {
            throw ValidationError("--weight must be 0...\(HostWeight.max), got \(weight)")
        }
        _ = try nameService()
    }

    private func nameService() throws -> [ClientEndpoint] {
        guard let list = ClientEndpoint.list(names) else {
            throw ValidationError("--names must be HOST:PORT or several comma-separated, got '\(names)'")
        }
        return list
    }

    func run() async throws {
        service.bootstrapLogging()
        let logger = Logger(label: "switchyard.register")
        let nameServices = try nameService()
        let group = try EventLoopGroup(ioLoops: 0)
        let registration: ServiceRegistration
        do {
            registration = try ServiceRegistration(
                loop: group.acceptorLoop, nameServiceHost: nameServices[0].host,
                nameServicePort: nameServices[0].port, alternates: Array(nameServices.dropFirst()), modid: modid,
                cmdid: cmdid, host: Host(address: ip, port: port)!, ttl: .milliseconds(Int64(ttl * 1000)),
                weight: UInt32(weight), token: token, logger: logger)
        } catch {
            await group.shutdown()
            throw error
        }
        try await runServices(
            [EventLoopGroupService(group: group), registration],
            announcing: "registering \(ip):\(port) for \(modid)/\(cmdid) with \(names), ttl \(ttl) s "
                + "(Ctrl-C to take it back)",
            logger: logger)
    }
}
