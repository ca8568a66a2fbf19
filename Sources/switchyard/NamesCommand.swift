import Foundation
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

    @Option(help: "Most self-registered hosts at once.")
    var maxRegistrations = NameServiceConfiguration().maxRegistrations

    @Option(help: "Most self-registered hosts one source address may hold.")
    var maxRegistrationsPerSource = NameServiceConfiguration().maxRegistrationsPerSource

    @Option(help: "Most self-registered hosts of one route.")
    var maxRegistrationsPerRoute = NameServiceConfiguration().maxRegistrationsPerRoute

    @Option(help: """
        Seconds after which RouteChange rows are deleted, counted from when this service first saw their version \
        (0 keeps them for ever).
        """)
    var routeChangeRetention: Double = 3600

    @Option(help: """
        Where self-registrations are kept: database (HostRegistration: every name service on the database serves \
        them; run several for failover) or memory (this process only).
        """)
    var registrations: RegistrationStore = .database

    @Option(help: "Milliseconds between writes of the registrations changed through this name service.")
    var registrationSyncMs = 250

    @Option(help: """
        A parent name service HOST:PORT (or its replicas, comma-separated): routes this one has no rows or \
        registrations for are asked of it, held, and pushed down when it pushes; this one's own rows win.
        """)
    var parent: String?

    @Option(help: "The most name services a route request passes through (parents in a chain).")
    var maxChainHops = NameServiceConfiguration().maxChainHops

    @Option(help: """
        A file of module owner tokens, one 'MODID TOKEN' per line ('#' comments): registrations for those modules \
        must carry the token (beside the database's ModuleToken rows; the file wins).
        """)
    var tokens: String?

    @Option(help: "Seconds the state relay keeps its changes for subscribers that come back (StateChange rows).")
    var stateRetention: Double = 600

    @Option(help: "The largest state change payload in KiB; a larger publish is refused with a reason.")
    var stateMaxPayloadKib = NameServiceConfiguration().stateMaxPayload / 1024

    @Option(help: """
        KiB of publishes waiting for the database (all publishers); beyond it publishes are refused and counted.
        """)
    var statePendingKib = NameServiceConfiguration().stateMaxPendingBytes / 1024

    @Option(help: "KiB of unsent state changes after which a subscriber that does not read is closed.")
    var stateSubscriberQueueKib = NameServiceConfiguration().stateMaxSubscriberQueue / 1024

    enum RegistrationStore: String, ExpressibleByArgument, CaseIterable {
        case database, memory
    }

    @OptionGroup var service: ServiceOptions
    @OptionGroup var loops: PlacementOptions

    func validate() throws {
        guard (0...65535).contains(port) else { throw ValidationError("--port must be 0...65535, got \(port)") }
        guard pollInterval > 0, pollInterval <= 3600 else { throw ValidationError("--poll-interval must be 0...3600 s") }
        guard fullReloadInterval > 0 else { throw ValidationError("--full-reload-interval must be positive") }
        guard routeChangeRetention >= 0, routeChangeRetention.isFinite else {
            throw ValidationError("--route-change-retention must be 0 or more seconds, got \(routeChangeRetention)")
        }
        if let parent, ClientEndpoint.list(parent) == nil {
            throw ValidationError("--parent: expected HOST:PORT, or several comma-separated, got '\(parent)'")
        }
        if let tokens { _ = try Self.readTokens(tokens) }
        guard (1...60_000).contains(registrationSyncMs) else {
            throw ValidationError("--registration-sync-ms must be 1...60000, got \(registrationSyncMs)")
        }
        guard stateRetention > 0, stateRetention <= 30 * 86400 else {
            throw ValidationError(
                "--state-retention must be above 0 and at most 2592000 s (30 days), got \(stateRetention)")
        }
        guard (1...1024).contains(stateMaxPayloadKib) else {
            throw ValidationError("--state-max-payload-kib must be 1...1024, got \(stateMaxPayloadKib)")
        }
        let queues = [("--state-pending-kib", statePendingKib),
                      ("--state-subscriber-queue-kib", stateSubscriberQueueKib)]
        for (flag, kib) in queues where !(stateMaxPayloadKib...(1 << 22)).contains(kib) {
            throw ValidationError("\(flag) must be \(stateMaxPayloadKib)...4194304 (at least the payload), got \(kib)")
        }
        guard (0...64).contains(threads) else { throw ValidationError("--threads must be 0...64, got \(threads)") }
        do {
            try configuration.validate()
        } catch {
            throw ValidationError("\(error)")
        }
    }

    var configuration: NameServiceConfiguration {
        var configuration = NameServiceConfiguration(
            host: host, port: port, pollInterval: .seconds(pollInterval),
            fullReloadInterval: .seconds(fullReloadInterval), maxRegistrations: maxRegistrations,
            maxRegistrationsPerSource: maxRegistrationsPerSource, maxRegistrationsPerRoute: maxRegistrationsPerRoute,
            routeChangeRetention: routeChangeRetention == 0 ? nil : .seconds(routeChangeRetention))
        configuration.registrationsInDatabase = registrations == .database
        configuration.registrationSyncInterval = .milliseconds(registrationSyncMs)
        if let parent, let list = ClientEndpoint.list(parent) {
            configuration.parent = list[0]
            configuration.parentAlternates = Array(list.dropFirst())
        }
        configuration.maxChainHops = maxChainHops
        configuration.stateRetention = .milliseconds(Int64(stateRetention * 1000))
        configuration.stateMaxPayload = stateMaxPayloadKib * 1024
        configuration.stateMaxPendingBytes = statePendingKib * 1024
        configuration.stateMaxSubscriberQueue = stateSubscriberQueueKib * 1024
        if let tokens { configuration.moduleTokens = (try? Self.readTokens(tokens)) ?? [:] }
        return configuration
    }

    /// Reads a token file: `MODID TOKEN` per line, `#` comments, blank lines skipped. Throws a ValidationError
    /// naming the file and line.
    static func readTokens(_ path: String) throws -> [Int32: String] {
        guard let data = FileManager.default.contents(atPath: path), let text = String(data: data, encoding: .utf8) else {
            throw ValidationError("--tokens \(path): cannot read the file")
        }
        var tokens: [Int32: String] = [:]
        for (number, line) in text.split(separator: "\n", omittingEmptySubsequences: false).enumerated() {
            let fields = line.split(whereSeparator: { $0 == " " || $0 == "\t" || $0 == "\r" })
            if fields.isEmpty || fields[0].hasPrefix("#") { continue }
            guard fields.count == 2, let modid = Int32(fields[0]), fields[1].utf8.count <= 255 else {
                throw ValidationError("--tokens \(path): line \(number + 1): expected 'MODID TOKEN'")
            }
            tokens[modid] = String(fields[1])
        }
        return tokens
    }

    func run() async throws {
        service.bootstrapLogging()
        let logger = Logger(label: "switchyard.names")
        let pool = try await database.openReadyPool(logger: logger)
        let group = try loops.group(threads: threads, logger: logger)
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

    /// Opens a ready pool (quiet: warnings only), runs `body`, closes it. A failure of `body` other than a
    /// `CommandFailure` becomes one: `database URL: reason`.
    func withPool<T: Sendable>(label: String, _ body: @Sendable (ConnectionPool) async throws -> T) async throws -> T {
        var logger = Logger(label: label)
        logger.logLevel = .warning
        let pool = try await openReadyPool(logger: logger)
        do {
            let value = try await body(pool)
            await pool.close()
            return value
        } catch let failure as CommandFailure {
            await pool.close()
            throw failure
        } catch {
            await pool.close()
            throw CommandFailure("database \(pool.url): \(error)")
        }
    }
}

/// An error whose description is the whole message (ArgumentParser prints "Error: ..." and exits with 1).
struct CommandFailure: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}
