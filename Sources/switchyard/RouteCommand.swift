import ArgumentParser
import LoadBalancing
import Logging
import RouteStore
import Storage

struct RouteCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "route",
        abstract: "Add, remove and list the hosts of routes (RouteData); changes reach the name service's agents.",
        subcommands: [Add.self, Remove.self, List.self, Token.self]
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

        @Option(help: ArgumentHelp(
            "The host's weight, 0...10000: its share of the route's picks (0 drains it). Without it a new host "
                + "weighs 1 and an existing one keeps its weight; with it, an existing host gets the new weight "
                + "(RouteData gets its weight column first when it has none)."))
        var weight: Int?

        func validate() throws {
            if let weight, !HostWeight.isValid(weight) {
                throw ValidationError("--weight must be 0...\(HostWeight.max), got \(weight)")
            }
        }

        func run() async throws {
            let (key, host) = (target.key, target.host)
            let weight = self.weight.map { UInt32($0) }
            let outcome = try await withAdminPool(database) { pool in
                try await RouteAdmin.addHost(host, to: key, weight: weight, on: pool)
            }
            let weighing = weight.map { " with weight \($0)" } ?? ""
            switch outcome {
            case .changed(let version): print("added \(host) to route \(key)\(weighing) (route version \(version))")
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
            if !entries.isEmpty { print("modid  cmdid  weight  host") }
            for entry in entries {
                print(pad(entry.key.modid, 5) + "  " + pad(entry.key.cmdid, 5) + "  " + pad(Int32(entry.weight), 6)
                      + "  " + entry.host.description)
            }
        }

        private func pad(_ value: Int32, _ width: Int) -> String {
            let text = String(value)
            return String(repeating: " ", count: max(0, width - text.count)) + text
        }
    }
}

extension RouteCommand {
    struct Token: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Set or clear a module's owner token: its registrations (id 102) must then carry it.")

        @Option(help: "Module id.") var modid: Int32
        @Option(help: "The token (1...255 bytes); give it to the module's servers (`register --token`).")
        var token: String?
        @Flag(help: "Take the module's token away: it takes any registration again.") var clear = false
        @OptionGroup var database: DatabaseOptions

        func validate() throws {
            guard (token == nil) != !clear else { throw ValidationError("give either --token or --clear") }
            if let token, token.isEmpty || token.utf8.count > 255 {
                throw ValidationError("--token must be 1...255 bytes")
            }
        }

        func run() async throws {
            let (modid, token) = (self.modid, clear ? nil : self.token)
            try await withAdminPool(database) { pool in try await RouteAdmin.setModuleToken(token, modid: modid, on: pool) }
            print(token == nil ? "module \(modid) takes any registration" : "module \(modid) takes registrations with its token")
        }
    }
}

/// Opens the database (creating the tables when missing), runs `body`, closes it. Errors become a clear message
/// and exit status 1.
private func withAdminPool<T: Sendable>(_ database: DatabaseOptions,
                                        _ body: @Sendable (ConnectionPool) async throws -> T) async throws -> T {
    try await database.withPool(label: "switchyard.route", body)
}
