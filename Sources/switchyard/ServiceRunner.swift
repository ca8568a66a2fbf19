import Logging
import Reactor
import ServiceLifecycle

/// Runs a command's services in one `ServiceGroup` until SIGTERM or SIGINT, which start a graceful shutdown: the
/// group stops the services in reverse order (the last one first), each draining before the one before it stops.
/// `announce` is printed (and flushed) once the signals are trapped, so a script that reads it and at once sends
/// SIGTERM gets a graceful shutdown, never the default handler. Throws what a service throws.
func runServices(_ services: [any Service], announcing line: String, logger: Logger) async throws {
    var all = services
    all.append(AnnounceService(line: line))
    let group = ServiceGroup(configuration: ServiceGroupConfiguration(
        services: all.map { ServiceGroupConfiguration.ServiceConfiguration(service: $0) },
        gracefulShutdownSignals: [.sigterm, .sigint],
        logger: logger))
    try await group.run()
}

/// Prints its line when it starts and waits for the graceful shutdown (last in a group: it stops first).
private struct AnnounceService: Service {
    let line: String
    func run() async throws {
        announce(line)
        try? await gracefulShutdown()
    }
}

/// An event loop group as a service: put it first, so it stops last, after every server that runs on its loops.
struct EventLoopGroupService: Service {
    let group: EventLoopGroup
    func run() async throws {
        try? await gracefulShutdown()
        await group.shutdown()
    }
}

/// A started `TCPServer` as a service: on graceful shutdown it stops accepting and drains its connections.
struct TCPServerService: Service {
    let server: TCPServer
    var drainTimeout: Duration = .seconds(5)
    func run() async throws {
        try? await gracefulShutdown()
        await server.shutdown(timeout: drainTimeout)
    }
}

/// Binds `server` (a failure is a `CommandFailure` naming `command` and the address), then runs it and its group
/// until SIGTERM/SIGINT: the shape of every command that serves one TCP server.
func serveTCP(_ server: TCPServer, group: EventLoopGroup, command: String, host: String, port: Int,
              announcing line: (SocketAddress) -> String, logger: Logger) async throws {
    let address: SocketAddress
    do {
        address = try server.start()
    } catch {
        await group.shutdown()
        throw CommandFailure("\(command): cannot listen on \(host):\(port): \(error)")
    }
    try await runServices([EventLoopGroupService(group: group), TCPServerService(server: server)],
                          announcing: line(address), logger: logger)
}
