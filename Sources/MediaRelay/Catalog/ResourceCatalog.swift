import Storage

/// A movie (or any stream) the relay may play, as the Resource table holds it.
public struct MediaResource: Sendable, Hashable {
    public var id: Int64
    /// The name viewers ask for (`/live/NAME.ts`): 1...128 bytes of letters, digits, `.`, `_` and `-`.
    public var name: String
    /// The file on the relay's machine.
    public var path: String
    /// `video/mp2t` for MPEG-TS.
    public var mediaType: String
    /// Length of the media in milliseconds (from its first and last timestamps).
    public var durationMilliseconds: Int64
    /// When it was added (Unix seconds).
    public var added: Int64
}

/// Errors of the catalog.
public enum ResourceCatalogError: Error, Equatable, Sendable, CustomStringConvertible {
    /// The name is empty, too long, or has a character outside letters, digits, `.`, `_`, `-`.
    case badName(String)
    /// A resource of that name exists.
    case duplicateName(String)

    public var description: String {
        switch self {
        case .badName(let name):
            return "bad resource name '\(name)': 1...\(ResourceCatalog.maxNameBytes) bytes of letters, digits, '.', "
                + "'_' and '-'"
        case .duplicateName(let name): return "a resource named '\(name)' exists already"
        }
    }
}

/// The Resource table beside the route tables, on every database of Storage:
///
///     Resource(id, name UNIQUE, path, media_type, duration_ms, added)
///
/// Reached through a `ConnectionPool`, never from a loop.
public enum ResourceCatalog {
    public static let maxNameBytes = 128

    public static func createStatements(_ d: SQLDialect) -> [String] {
        [
            """
            CREATE TABLE IF NOT EXISTS Resource (id \(d.autoIncrementPrimaryKey), \
            name \(d.varchar(maxNameBytes)) NOT NULL UNIQUE, path \(d.textType) NOT NULL, \
            media_type \(d.varchar(64)) NOT NULL, duration_ms \(d.bigintType) NOT NULL, \
            added \(d.bigintType) NOT NULL)\(d.tableOptions)
            """,
        ]
    }

    /// Creates the table when missing. Idempotent.
    public static func create(on pool: ConnectionPool) async throws {
        for statement in createStatements(pool.dialect) { try await pool.execute(statement) }
    }

    /// True when `name` may name a resource (it goes into URLs as it is).
    public static func isValidName(_ name: String) -> Bool {
        let bytes = Array(name.utf8)
        guard (1...maxNameBytes).contains(bytes.count), bytes[0] != UInt8(ascii: ".") else { return false }
        return bytes.allSatisfy { b in
            (b >= 0x30 && b <= 0x39) || (b >= 0x41 && b <= 0x5A) || (b >= 0x61 && b <= 0x7A)
                || b == UInt8(ascii: ".") || b == UInt8(ascii: "_") || b == UInt8(ascii: "-")
        }
    }

    /// Adds a resource. Throws `ResourceCatalogError` for a bad or taken name, or `StorageError`.
    @discardableResult
    public static func add(name: String, path: String, mediaType: String = "video/mp2t",
                           durationMilliseconds: Int64, added: Int64, on pool: ConnectionPool) async throws
        -> MediaResource
    {
        guard isValidName(name) else { throw ResourceCatalogError.badName(name) }
        return try await pool.transaction { conn in
            if try await conn.queryFirst("SELECT id FROM Resource WHERE name = ?", [.text(name)]) != nil {
                throw ResourceCatalogError.duplicateName(name)
            }
            try await conn.execute(
                "INSERT INTO Resource (name, path, media_type, duration_ms, added) VALUES (?, ?, ?, ?, ?)",
                [.text(name), .text(path), .text(mediaType), .integer(durationMilliseconds), .integer(added)])
            guard let row = try await conn.queryFirst(select + " WHERE name = ?", [.text(name)]) else {
                throw StorageError.other(.init("the resource '\(name)' was not found after its insert"))
            }
            return try resource(row)
        }
    }

    /// The resource of that name, if any.
    public static func find(name: String, on pool: ConnectionPool) async throws -> MediaResource? {
        guard isValidName(name) else { return nil }
        return try await pool.queryFirst(select + " WHERE name = ?", [.text(name)]).map(resource)
    }

    /// Every resource, by name.
    public static func list(on pool: ConnectionPool) async throws -> [MediaResource] {
        try await pool.query(select + " ORDER BY name", []).rows.map(resource)
    }

    /// Removes the resource of that name; false when there was none.
    @discardableResult
    public static func remove(name: String, on pool: ConnectionPool) async throws -> Bool {
        try await pool.execute("DELETE FROM Resource WHERE name = ?", [.text(name)]) > 0
    }

    private static let select = "SELECT id, name, path, media_type, duration_ms, added FROM Resource"

    private static func resource(_ row: SQLRow) throws -> MediaResource {
        MediaResource(id: try row.decode("id"), name: try row.decode("name"), path: try row.decode("path"),
                      mediaType: try row.decode("media_type"), durationMilliseconds: try row.decode("duration_ms"),
                      added: try row.decode("added"))
    }
}
