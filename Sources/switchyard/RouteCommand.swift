import ArgumentParser
import LoadBalancing
import Logging
import RouteStore
import Storage

struct RouteCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "route",
        abstract: "Add, remove and list the hosts of routes (RouteData); changes reach the name service's agents.",
        subcommands: [Add.self, Remove.self, List.self]
    )

    /// The route and host of `add` and `remove`.
    struct HostOptions: ParsableArguments {
        @Option(help: "Module id.")
        var modid: Int32

        @Option(help: "Command id.")
        var cmdid: Int32

        @Option(help: "The host's IPv4 address (a.b.c.d).")
        var ip: String

        @Option(help: "The host's port (1...65535).")
        var port: Int

        func validate() throws {
            guard LoadBalancing.Host.parseIPv4(ip) != nil else { throw ValidationError("--ip must be an IPv4 address a.b.c.d, got '\(ip)'") }
            guard (1...65535).contains(port) else { throw ValidationError("--port must be 1...65535, got \(port)") }
        }

        var key: RouteKey { RouteKey(modid: modid, cmdid: cmdid) }
        var host: LoadBalancing.Host { LoadBalancing.Host(ip: LoadBalancing.Host.parseIPv4(ip)!, port: UInt16(port)) }
    }

    struct Add: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Add a host to a route.")

        @OptionGroup var target: HostOptions
        @OptionGroup var database: DatabaseOptions

        func run() async throws {
            let (key, host) = (target.key, target.host)
            let outcome = try await withAdminPool(database) { pool in try await RouteAdmin.addHost(host, to: key, on: pool) }
            switch outcome {
            case .changed(let version): print("added \(host) to route \(key) (route version \(version))")
            case .unchanged: print("\(host) is already in route \(key) (nothing changed)")
            }
        }
    }

    struct Remove: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Remove a host from a route.")

        @OptionGroup var target: HostOptions
        @OptionGroup var database: DatabaseOptions

        func run() async throws {
            let (key, host) = (target.key, target.host)
            let outcome = try await withAdminPool(database) { pool in try await RouteAdmin.removeHost(host, from: key, on: pool) }
            switch outcome {
            case .changed(let version): print("removed \(host) from route \(key) (route version \(version))")
            case .unchanged: print("\(host) is not in route \(key) (nothing changed)")
            }
        }
    }

    struct List: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "List routes and their hosts.")

        @Option(help: "Only this module's routes.")
        var modid: Int32?

        @OptionGroup var database: DatabaseOptions

        func run() async throws {
            let modid = self.modid
            let (entries, version) = try await withAdminPool(database) { pool in
                (try await RouteAdmin.listRoutes(modid: modid, on: pool), try await RouteAdmin.currentVersion(on: pool))
            }
            print("route version \(version), \(entries.count) host\(entries.count == 1 ? "" : "s")")
            if !entries.isEmpty { print("modid  cmdid  host") }
            for entry in entries {
                print(pad(entry.key.modid, 5) + "  " + pad(entry.key.cmdid, 5) + "  " + entry.host.description)
            }
        }

        private func pad(_ value: Int32, _ width: Int) -> String {
            let text = String(value)
            return String(repeating: " ", count: max(0, width - text.count)) + text
        }
    }
}

/// Opens the database (creating the tables when missing), runs `body`, closes it. Errors become a clear message
/// and exit status 1.
private func withAdminPool<T: Sendable>(_ database: DatabaseOptions,
                                        _ body: @Sendable (ConnectionPool) async throws -> T) async throws -> T {
    var logger = Logger(label: "switchyard.route")
    logger.logLevel = .warning
    let pool = try await database.openReadyPool(logger: logger)
    do {
        let value = try await body(pool)
        await pool.close()
        return value
    } catch {
        await pool.close()
        throw CommandFailure("database \(pool.url): \(error)")
    }
}
