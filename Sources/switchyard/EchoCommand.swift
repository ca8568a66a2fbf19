import EchoServer
import ArgumentParser
import Logging
import Reactor
import ServiceLifecycle

struct EchoCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "echo",
        abstract: "Echo raw bytes of any length back to each client (try it with nc)."
    )

    @Option(help: "Address to bind.")
    var host = "127.0.0.1"

    @Option(help: "Port to bind (0: let the kernel pick; the bound address is printed).")
    var port = 7777

    @Option(help: "I/O threads (0: the acceptor thread does the I/O too). Default: one per core.")
    var threads: Int = SystemInfo.coreCount

    @Option(help: "I/O multiplexer: epoll, poll or select.")
    var poller: PollerKind = .epoll

    @Option(help: "Maximum concurrent connections; more are refused.")
    var maxConnections = 100_000

    @Option(help: "Seconds a connection may send nothing before it is closed (0: never).")
    var idleTimeout = 300

    @Option(help: "KiB of echo queued per connection before the server stops reading from it (64...1048576).")
    var highWaterKib = 4096

    @OptionGroup var service: ServiceOptions
    @OptionGroup var loops: PlacementOptions

    func validate() throws {
        guard (0...65535).contains(port) else { throw ValidationError("--port must be 0...65535, got \(port)") }
        guard (0...1024).contains(threads) else { throw ValidationError("--threads must be 0...1024, got \(threads)") }
        guard maxConnections > 0 else { throw ValidationError("--max-connections must be positive") }
        guard (0...86_400).contains(idleTimeout) else { throw ValidationError("--idle-timeout must be 0...86400") }
        guard (64...1_048_576).contains(highWaterKib) else {
            throw ValidationError("--high-water-kib must be 64...1048576")
        }
    }

    func run() async throws {
        service.bootstrapLogging()
        let logger = Logger(label: "switchyard.echo")
        let group = try loops.group(threads: threads, poller: poller, logger: logger)
        let server = EchoService.server(group: group, host: host, port: port, maxConnections: maxConnections,
                                        highWaterKiB: highWaterKib, idleTimeoutSeconds: idleTimeout, logger: logger)
        try await serveTCP(server, group: group, command: "echo", host: host, port: port,
                           announcing: { "echo listening on \($0) (poller \(poller), \(threads) I/O threads)" },
                           logger: logger)
    }
}
