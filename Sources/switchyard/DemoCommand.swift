import ArgumentParser
import Logging
import SwitchyardDemo
import Reactor
#if canImport(Glibc)
import Glibc
#endif

struct DemoCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "demo",
        abstract: "The whole load-balancing system in one process: watch a failing backend go to overload and back."
    )

    @Option(help: "How long the demo runs, in seconds (the failure starts at 25 % and ends at 55 %).")
    var seconds = 40

    @Flag(help: "Plain periodic lines even on a terminal.")
    var plain = false

    @OptionGroup var service: ServiceOptions

    func validate() throws {
        guard (4...3600).contains(seconds) else { throw ValidationError("--seconds must be 4...3600, got \(seconds)") }
    }

    func run() async throws {
        // The demo's own output is the point: services log errors only, unless asked for another level.
        var options = service
        if options.logLevel == .info { options.logLevel = .error }
        options.bootstrapLogging()
        let logger = Logger(label: "switchyard.demo")
        let group = try EventLoopGroup(ioLoops: 2, configuration: LoopConfiguration(), logger: logger)
        let interactive = !plain && isatty(STDOUT_FILENO) != 0
        let demo = LoadBalanceDemo(
            group: group,
            configuration: DemoConfiguration(duration: .seconds(seconds), interactive: interactive),
            logger: logger,
            output: { text in
                print(text)
                fflushStdout()
            })
        do {
            // SIGINT/SIGTERM end the run early; the summary is still printed.
            _ = try await demo.run(stoppingOn: [.sigint, .sigterm])
        } catch {
            await group.shutdown()
            throw CommandFailure("demo: \(error)")
        }
        await group.shutdown()
    }
}
