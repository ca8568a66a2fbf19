import Logging
import Reactor
import ServiceLifecycle
import Storage

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

/// Binds a command's service with `bind` (a failure is a `CommandFailure` naming `command` and the address, after the
/// loops and the pool are released), then runs the loops, the pool (when given) and the service until SIGTERM/SIGINT.
/// They stop in reverse: the service (stops accepting, drains), the pool, the loops.
func serve(_ service: any Service, binding bind: () throws -> SocketAddress, command: String, host: String, port: Int,
           group: EventLoopGroup, pool: ConnectionPool? = nil, announcing line: (SocketAddress) -> String,
           logger: Logger) async throws {
    let address: SocketAddress
    do {
        address = try bind()
    } catch {
        await group.shutdown()
        await pool?.close()
        throw CommandFailure("\(command): cannot listen on \(host):\(port): \(error)")
    }
    let services: [any Service] = [EventLoopGroupService(group: group)] + (pool.map { [$0] } ?? []) + [service]
    try await runServices(services, announcing: line(address), logger: logger)
}

/// `serve` for a bare `TCPServer`.
func serveTCP(_ server: TCPServer, group: EventLoopGroup, command: String, host: String, port: Int,
              announcing line: (SocketAddress) -> String, logger: Logger) async throws {
    try await serve(TCPServerService(server: server), binding: server.start, command: command, host: host, port: port,
                    group: group, announcing: line, logger: logger)
}
