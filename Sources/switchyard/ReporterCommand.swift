import ArgumentParser
import Logging
import Reactor
import Reporter

struct ReporterCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "reporter",
        abstract: "Run the reporter: each agent's latest window counts per host overwrite its ServerCallStatus rows."
    )

    @Option(help: "Address to bind.")
    var host = "127.0.0.1"

    @Option(help: "Port to bind (0: let the kernel pick; the bound address is printed).")
    var port = 7779

    @OptionGroup var database: DatabaseOptions

    @Option(help: "Reports held while the database is slow; beyond this the agents' connections are paused.")
    var queueCapacity = 10_000

    @Option(help: "Bytes of queued reports held (36 B a result, 64 B a report); beyond this connections are paused.")
    var maxQueuedBytes = 4 << 20

    @Option(help: "Most results in one report; a larger report is refused (counted, logged once a minute).")
    var maxReportResults = 10_000

    @Option(help: "Seconds a graceful shutdown goes on writing queued reports; how many were not written is logged.")
    var drainTimeout = 5.0

    @Option(help: "I/O threads.")
    var threads = 1

    @OptionGroup var service: ServiceOptions
    @OptionGroup var loops: PlacementOptions

    func validate() throws {
        guard (0...65535).contains(port) else { throw ValidationError("--port must be 0...65535, got \(port)") }
        guard queueCapacity > 0 else { throw ValidationError("--queue-capacity must be positive") }
        guard drainTimeout >= 0 && drainTimeout.isFinite else {
            throw ValidationError("--drain-timeout must not be negative")
        }
        guard (0...64).contains(threads) else { throw ValidationError("--threads must be 0...64, got \(threads)") }
        do {
            try configuration.validate()
        } catch {
            throw ValidationError("\(error)")
        }
    }

    var configuration: ReporterConfiguration {
        ReporterConfiguration(host: host, port: port, queueCapacity: queueCapacity, maxQueuedBytes: maxQueuedBytes,
                              maxReportResults: maxReportResults,
                              drainTimeout: .milliseconds(Int64((drainTimeout * 1000).rounded())))
    }

    func run() async throws {
        service.bootstrapLogging()
        let logger = Logger(label: "switchyard.reporter")
        let pool = try await database.openReadyPool(logger: logger)
        let group = try loops.group(threads: threads, logger: logger)
        let reporter = Reporter(group: group, configuration: configuration, pool: pool, logger: logger)
        try await serve(reporter, binding: reporter.start, command: "reporter", host: host, port: port, group: group,
                        pool: pool,
                        announcing: { "reporter listening on \($0) (db \(pool.url))" },
                        logger: logger)
        let stats = reporter.statistics
        logger.info("reporter totals", metadata: [
            "received": "\(stats.received)", "written": "\(stats.written)", "dropped": "\(stats.dropped)",
            "failedWrites": "\(stats.failedWrites)", "refused": "\(stats.refused)", "pauses": "\(stats.pauses)",
            "unwritten": "\(stats.queued)",
        ])
    }
}
