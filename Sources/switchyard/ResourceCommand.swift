import ArgumentParser
import Foundation
import Logging
import MediaRelay
import Storage

struct ResourceCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "resource",
        abstract: "Add, list and remove the movies the media relay may play (the Resource table).",
        subcommands: [Add.self, List.self, Remove.self]
    )

    struct Add: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Add a movie: the file is checked (MPEG-TS with a readable clock) and its length stored.")

        @Option(help: "Name viewers ask for (letters, digits, '.', '_', '-'; at most 128 bytes).")
        var name: String

        @Option(help: "The MPEG-TS file on the relay's machine.")
        var path: String

        @OptionGroup var database: DatabaseOptions

        func validate() throws {
            guard ResourceCatalog.isValidName(name) else {
                throw ValidationError("\(ResourceCatalogError.badName(name))")
            }
        }

        func run() async throws {
            let absolute = URL(fileURLWithPath: path).standardizedFileURL.path
            let probe: MediaProbeResult
            do {
                probe = try MediaProbe.probe(path: absolute)
            } catch {
                throw CommandFailure("\(error)")
            }
            let (name, duration) = (self.name, probe.durationMilliseconds)
            let added = Int64(Date().timeIntervalSince1970)
            let resource = try await withResourcePool(database) { pool in
                try await ResourceCatalog.add(name: name, path: absolute, durationMilliseconds: duration, added: added,
                                              on: pool)
            }
            let codecs = probe.program.streams.map(\.kind.codecName).joined(separator: "+")
            print("added \(resource.name): \(resource.path), \(codecs), \(Self.format(duration))")
        }

        static func format(_ ms: Int64) -> String {
            String(format: "%d:%02d.%03d", ms / 60_000, ms / 1000 % 60, ms % 1000)
        }
    }

    struct List: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "List the movies, by name.")

        @OptionGroup var database: DatabaseOptions

        func run() async throws {
            let resources = try await withResourcePool(database) { pool in try await ResourceCatalog.list(on: pool) }
            if resources.isEmpty { print("no resources") }
            for r in resources {
                print("\(r.name)\t\(Add.format(r.durationMilliseconds))\t\(r.mediaType)\t\(r.path)")
            }
        }
    }

    struct Remove: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Remove a movie from the catalog (not the file).")

        @Option(help: "The resource's name.")
        var name: String

        @OptionGroup var database: DatabaseOptions

        func run() async throws {
            let name = self.name
            let removed = try await withResourcePool(database) { pool in
                try await ResourceCatalog.remove(name: name, on: pool)
            }
            guard removed else { throw CommandFailure("no resource named '\(name)'") }
            print("removed \(name)")
        }
    }
}

/// A pool on the database with the route and resource tables, closed after `body`; failures as one line.
private func withResourcePool<T: Sendable>(_ database: DatabaseOptions,
                                           _ body: @Sendable (ConnectionPool) async throws -> T) async throws -> T {
    try await database.withPool(label: "switchyard.resource") { pool in
        do {
            try await ResourceCatalog.create(on: pool)
            return try await body(pool)
        } catch let error as ResourceCatalogError {
            throw CommandFailure("\(error)")
        }
    }
}
