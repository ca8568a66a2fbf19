import ArgumentParser
import Logging
import SwitchyardBench
import SwitchyardCore
import Messaging
import Reactor

struct BenchCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "bench",
        abstract: "Benchmarks and the servers the benchmark suite measures.",
        subcommands: [QPSCommand.self, FramedEchoServerCommand.self, StorageBenchCommand.self, LBBenchCommand.self, ChatBenchCommand.self,
                      ChatIdleBenchCommand.self, DatabaseAgentBenchCommand.self]
    )
}

struct QPSCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "qps",
        abstract: "Protobuf echo ping-pong: messages per second, each second and in all."
    )

    @Option(help: "Concurrent connections.") var connections = 10
    @Option(help: "Client I/O threads (and server I/O threads for the in-process server).") var threads = 1
    @Option(help: "Seconds to run.") var seconds = 5
    @Option(help: "Payload bytes per message.") var size = 16
    @Option(help: "Server address host:port; without it a server is started in this process.") var server: String?
    @Option(help: "Poller of the in-process server and the clients.") var poller: PollerKind = .epoll
    @OptionGroup var output: JSONOutputOption

    /// The `--json` result.
    struct Summary: Encodable {
        let connections: Int
        let payloadBytes: Int
        let messages: Int
        let seconds: Double
        let messagesPerSecond: Double
        let perSecond: [Int]
    }

    func validate() throws {
        guard connections > 0 && connections <= 100_000 else { throw ValidationError("--connections must be 1...100000") }
        guard threads > 0 && threads <= 256 else { throw ValidationError("--threads must be 1...256") }
        guard seconds > 0 && seconds <= 3600 else { throw ValidationError("--seconds must be 1...3600") }
        guard size >= 0 && size <= 4 << 20 else { throw ValidationError("--size must be 0...4194304") }
        if let server, parseHostPort(server) == nil {
            throw ValidationError("--server must be HOST:PORT, got '\(server)'")
        }
    }

    func run() throws {
        let clientGroup = try EventLoopGroup(ioLoops: threads, configuration: LoopConfiguration(poller: poller))
        defer { clientGroup.shutdown() }
        var serverGroup: EventLoopGroup?
        var framed: FramedServer?
        let address: SocketAddress
        if let server, let (host, port) = parseHostPort(server) {
            address = try SocketAddress(host: host, port: port)
        } else {
            let group = try EventLoopGroup(ioLoops: threads, configuration: LoopConfiguration(poller: poller))
            let s = FramedServer(group: group, router: EchoBenchmark.makeEchoRouter())
            address = try s.start()
            serverGroup = group
            framed = s
        }
        let json = output.json
        if !json { announce("qps: \(connections) connections, \(size)-byte payload, \(seconds) s against \(address)") }
        let result = try EchoBenchmark.runQPS(
            group: clientGroup, address: address,
            options: .init(connections: connections, seconds: seconds, payloadSize: size)
        ) { second, count in if !json { announce("second \(second): \(count) msgs/s") } }
        if json {
            try output.emit(Summary(connections: connections, payloadBytes: size, messages: result.total,
                                    seconds: result.seconds, messagesPerSecond: result.messagesPerSecond,
                                    perSecond: result.perSecond))
        } else {
            announce("total: \(result.total) messages in \(String(format2(result.seconds))) s = "
                     + "\(Int(result.messagesPerSecond)) msgs/s")
        }
        framed?.shutdown(timeout: .seconds(1))
        serverGroup?.shutdown()
    }
}

struct FramedEchoServerCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "framed-echo-server",
        abstract: "A protobuf echo server (message id 1000) for the benchmark suite."
    )

    @Option(help: "Address to bind.") var host = "127.0.0.1"
    @Option(help: "Port to bind (0: the kernel picks; the address is printed).") var port = 7780
    @Option(help: "I/O threads (0: the acceptor thread does the I/O).") var threads = SystemInfo.coreCount
    @Option(help: "I/O multiplexer: epoll, poll or select.") var poller: PollerKind = .epoll
    @OptionGroup var service: ServiceOptions
    @OptionGroup var loops: PlacementOptions

    func validate() throws {
        guard (0...65535).contains(port) else { throw ValidationError("--port must be 0...65535, got \(port)") }
        guard (0...1024).contains(threads) else { throw ValidationError("--threads must be 0...1024, got \(threads)") }
    }

    func run() async throws {
        service.bootstrapLogging()
        let logger = Logger(label: "switchyard.bench")
        let group = try loops.group(threads: threads, poller: poller, logger: logger)
        let server = FramedServer(
            group: group,
            configuration: FramedServerConfiguration(server: ServerConfiguration(host: host, port: port)),
            router: EchoBenchmark.makeEchoRouter(), logger: logger)
        try await serveTCP(
            server.tcp, group: group, command: "framed-echo-server", host: host, port: port,
            announcing: { "framed echo listening on \($0) (poller \(poller), \(threads) I/O threads)" },
            logger: logger)
    }
}

func parseHostPort(_ text: String) -> (String, Int)? {
    guard let (host, port) = IPv4Endpoint.splitHostPort(text), port > 0 else { return nil }
    return (host, port)
}

func format2(_ x: Double) -> String {
    let scaled = Int((x * 100).rounded())
    return "\(scaled / 100).\(String(format: scaled % 100))"
}

private extension String {
    init(format value: Int) { self = value < 10 ? "0\(value)" : "\(value)" }
}
