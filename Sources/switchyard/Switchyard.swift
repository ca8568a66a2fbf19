import ArgumentParser
import Logging
import Reactor

@main
struct Switchyard: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "switchyard",
        abstract: "A reactor network framework and the services built on it.",
        subcommands: [EchoCommand.self, BenchCommand.self, NamesCommand.self, ReporterCommand.self, RouteCommand.self, DemoCommand.self, AgentCommand.self, GetHostCommand.self, ReportCommand.self, GetRouteCommand.self, RegisterCommand.self, ChatCommand.self, ChatClientCommand.self]
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

/// Prints a line to stdout and flushes it at once (scripts wait for it).
func announce(_ line: String) {
    print(line)
    fflushStdout()
}
