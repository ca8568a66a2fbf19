import ArgumentParser
import Logging
import Reactor

@main
struct Switchyard: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "switchyard",
        abstract: "A reactor network framework and the services built on it.",
        subcommands: [EchoCommand.self, BenchCommand.self, NamesCommand.self, ReporterCommand.self, RouteCommand.self, ResourceCommand.self, RelayCommand.self, ProxyCommand.self, WatchCommand.self, PublishCommand.self, DemoCommand.self, AgentCommand.self, GetHostCommand.self, ReportCommand.self, GetRouteCommand.self, RegisterCommand.self, ChatCommand.self, ChatClientCommand.self, DatabaseAgentCommand.self, DatabaseQueryCommand.self]
    )
}

extension PollerKind: ExpressibleByArgument {}

/// Options every service shares.
struct ServiceOptions: ParsableArguments {
    @Option(help: "Log level: trace, debug, info, notice, warning, error, critical.")
    var logLevel: Logger.Level = .info

    func bootstrapLogging() {
        let level = logLevel
        LoggingSystem.bootstrap { label in
            var handler = StreamLogHandler.standardError(label: label)
            handler.logLevel = level
            return handler
        }
    }
}

extension Logger.Level: @retroactive ExpressibleByArgument {}

/// `--placement`: the `LoopPlacement` of a server's event loop group (servers with several I/O threads).
struct PlacementOptions: ParsableArguments {
    enum Choice: String, ExpressibleByArgument, CaseIterable {
        case adaptive
        case roundRobin = "round-robin"
    }

    @Option(help: """
        How new connections are spread over the I/O threads: adaptive (over as many loops as the machine has \
        cores free, the least loaded first) or round-robin (every loop in turn).
        """)
    var placement: Choice = .adaptive

    var loopPlacement: LoopPlacement { placement == .adaptive ? .adaptive : .roundRobin }

    /// A group of `threads` I/O loops on `poller` with this placement.
    func group(threads: Int, poller: PollerKind = .epoll, logger: Logger) throws -> EventLoopGroup {
        try EventLoopGroup(ioLoops: threads, configuration: LoopConfiguration(poller: poller), placement: loopPlacement,
                           logger: logger)
    }
}

/// Prints a line to stdout and flushes it at once (scripts wait for it).
func announce(_ line: String) {
    print(line)
    fflushStdout()
}
