import ArgumentParser
import Logging
import NameService
import Reactor
import RouteStore
import Storage

struct NamesCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "names",
        abstract: "Run the name service: agents ask which hosts serve (modid, cmdid) and get pushes when that changes."
    )

    @Option(help: "Address to bind.")
    var host = "127.0.0.1"

    @Option(help: "Port to bind (0: let the kernel pick; the bound address is printed).")
    var port = 7778

    @OptionGroup var database: DatabaseOptions

    @Option(help: "Seconds between reads of RouteVersion (fractions allowed).")
    var pollInterval: Double = 1

    @Option(help: "Seconds between full reloads of RouteData.")
    var fullReloadInterval: Double = 10

    @Option(help: "I/O threads.")
    var threads = 1

    @Option(help: "Most self-registered hosts at once (default 100000).")
    var maxRegistrations = NameServiceConfiguration().maxRegistrations

    @Option(help: "Most self-registered hosts one source address may hold (default 1000).")
    var maxRegistrationsPerSource = NameServiceConfiguration().maxRegistrationsPerSource

    @Option(help: "Most self-registered hosts of one route (default 1000).")
    var maxRegistrationsPerRoute = NameServiceConfiguration().maxRegistrationsPerRoute

    @Option(help: """
        Seconds after which RouteChange rows are deleted, counted from when this service first saw their version \
        (default 3600; 0 keeps them for ever).
        """)
    var routeChangeRetention: Double = 3600

    @OptionGroup var service: ServiceOptions
    @OptionGroup var loops: PlacementOptions

    func validate() throws {
        guard (0...65535).contains(port) else { throw ValidationError("--port must be 0...65535, got \(port)") }
        guard pollInterval > 0, pollInterval <= 3600 else { throw ValidationError("--poll-interval must be 0...3600 s") }
        guard fullReloadInterval > 0 else { throw ValidationError("--full-reload-interval must be positive") }
        guard routeChangeRetention >= 0, routeChangeRetention.isFinite else {
            throw ValidationError("--route-change-retention must be 0 or more seconds, got \(routeChangeRetention)")
        }
        guard (0...64).contains(threads) else { throw ValidationError("--threads must be 0...64, got \(threads)") }
        do {
            try configuration.validate()
        } catch {
            throw ValidationError("\(error)")
        }
    }

    var configuration: NameServiceConfiguration {
        NameServiceConfiguration(host: host, port: port, pollInterval: .seconds(pollInterval),
                                 fullReloadInterval: .seconds(fullReloadInterval), maxRegistrations: maxRegistrations,
                                 maxRegistrationsPerSource: maxRegistrationsPerSource,
                                 maxRegistrationsPerRoute: maxRegistrationsPerRoute,
                                 routeChangeRetention: routeChangeRetention == 0 ? nil : .seconds(routeChangeRetention))
    }

    func run() async throws {
        service.bootstrapLogging()
        let logger = Logger(label: "switchyard.names")
        let pool = try await database.openReadyPool(logger: logger)
        let group = try EventLoopGroup(
            ioLoops: threads, configuration: LoopConfiguration(),
            placement: loops.loopPlacement, logger: logger)
        let names = NameService(group: group, configuration: configuration, pool: pool, logger: logger)
        try await serve(names, binding: names.start, command: "names", host: host, port: port, group: group,
                        pool: pool,
                        announcing: { "names listening on \($0) (db \(pool.url), polling every \(pollInterval) s)" },
                        logger: logger)
    }
}

/// The `--db` option of every command that touches the database.
struct DatabaseOptions: ParsableArguments {
    @Option(name: .customLong("db"),
            help: "Database URL: sqlite:FILE, mysql://user:pass@host:port/db or postgres://user:pass@host:port/db.")
    var url = "sqlite:switchyard.sqlite"

    /// Opens a pool and creates the Lars tables when missing (the one place the CLI creates them: `RouteSchema`);
    /// a bad URL or an unreachable database is a `CommandFailure` with the reason.
    func openReadyPool(logger: Logger) async throws -> ConnectionPool {
        let pool: ConnectionPool
        do {
            pool = try ConnectionPool(
                url: url,
                configuration: PoolConfiguration(minConnections: 0, maxConnections: 4, acquireTimeout: .seconds(5),
                                                 connectTimeout: .seconds(5)),
                logger: logger)
        } catch {
            throw CommandFailure("\(error)")
        }
        do {
            try await RouteSchema.create(on: pool)
        } catch {
            await pool.close()
            throw CommandFailure("cannot use the database \(pool.url): \(error)")
        }
        return pool
    }
}

/// An error whose description is the whole message (ArgumentParser prints "Error: ..." and exits with 1).
struct CommandFailure: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}
