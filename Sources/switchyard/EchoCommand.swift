import EchoServer
import ArgumentParser
import Dispatch
import Logging
import Reactor

struct EchoCommand: ParsableCommand {
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

    @OptionGroup var service: ServiceOptions
    @OptionGroup var loops: PlacementOptions

    func validate() throws {
        guard (0...65535).contains(port) else { throw ValidationError("--port must be 0...65535, got \(port)") }
        guard (0...1024).contains(threads) else { throw ValidationError("--threads must be 0...1024, got \(threads)") }
        guard maxConnections > 0 else { throw ValidationError("--max-connections must be positive") }
    }

    func run() throws {
        service.bootstrapLogging()
        let logger = Logger(label: "switchyard.echo")
        let group = try EventLoopGroup(
            ioLoops: threads, configuration: LoopConfiguration(poller: poller, logger: logger),
            placement: loops.loopPlacement)
        // Before accepting: a flood of clients right after the announce could otherwise take the descriptor the
        // signal eventfd needs (EMFILE, exit 1), and a SIGTERM right after it could meet the default handler.
        let termination = try TerminationWaiter(group: group, logger: logger)
        let server = TCPServer(
            group: group,
            configuration: ServerConfiguration(host: host, port: port, maxConnections: maxConnections, logger: logger),
            callbacks: EchoService.callbacks())
        let address: SocketAddress
        do {
            address = try server.start()
        } catch {
            group.shutdown()
            throw CleanExit.message("echo: cannot listen on \(host):\(port): \(error)")
        }
        announce("echo listening on \(address) (poller \(poller), \(threads) I/O threads)")
        termination.wait()
        server.shutdown(timeout: .seconds(5))
        group.shutdown()
    }
}

/// Blocks the calling thread until SIGINT or SIGTERM.
func waitForTermination(group: EventLoopGroup, logger: Logger) throws {
    try TerminationWaiter(group: group, logger: logger).wait()
}

/// SIGINT/SIGTERM handlers installed at once (create it before the service starts accepting or announces itself);
/// `wait()` blocks until one of the signals arrives, then restores the default handlers.
struct TerminationWaiter {
    private let done = DispatchSemaphore(value: 0)
    private let signals: TerminationSignals

    init(group: EventLoopGroup, logger: Logger) throws {
        let done = self.done
        signals = try TerminationSignals(loop: group.acceptorLoop) { signo in
            logger.info("signal received, shutting down", metadata: ["signal": "\(signo)"])
            done.signal()
        }
    }

    func wait() {
        done.wait()
        signals.uninstall()
    }
}
