import LoadBalancing
import Storage

/// One host of a route as stored in RouteData.
public struct RouteEntry: Sendable, Hashable, CustomStringConvertible {
    /// The route.
    public var key: RouteKey
    /// The host.
    public var host: Host
    /// The host's weight (``HostWeight``): RouteData.weight, 1 in a database without that column.
    public var weight: UInt32

    /// Creates an entry.
    public init(key: RouteKey, host: Host, weight: UInt32 = HostWeight.standard) {
        self.key = key
        self.host = host
        self.weight = weight
    }

    public var description: String {
        "\(key.modid) \(key.cmdid) \(host)" + (weight == HostWeight.standard ? "" : " weight \(weight)")
    }
}

/// Edits routes: every change edits RouteData, bumps RouteVersion and records a RouteChange row, in one
/// transaction, so the name service reloads and pushes the changed route to its subscribers.
///
///     try await RouteSchema.create(on: pool)
///     try await RouteAdmin.addHost(Host(address: "10.0.0.5", port: 9000)!, to: RouteKey(modid: 7, cmdid: 1), on: pool)
public enum RouteAdmin {
    /// What an add or remove did.
    public enum Outcome: Sendable, Hashable {
        /// The route changed; RouteVersion is now `version`.
        case changed(version: Int64)
        /// Nothing to do (the host was already there, or not there to remove); the version was not bumped.
        case unchanged
    }

    /// Adds a host to a route. With a `weight` (0...``HostWeight/max``) the host gets it, and a host already in the
    /// route whose weight differs is given the new one (a change); the weight column is added to a RouteData without
    /// it first (``RouteSchema/addWeightColumnIfMissing(on:table:)``). Without one, a new host weighs 1 and an
    /// existing one keeps its weight, and a Lars database is written as Lars writes it. Throws
    /// ``RouteAdminError`` for a weight out of range, ``StorageError``.
    @discardableResult
    public static func addHost(_ host: Host, to key: RouteKey, weight: UInt32? = nil,
                               on pool: ConnectionPool) async throws -> Outcome {
        if let weight {
            guard HostWeight.isValid(Int(weight)) else { throw RouteAdminError.weightOutOfRange(Int(weight)) }
            try await RouteSchema.addWeightColumnIfMissing(on: pool)
        }
        return try await pool.transaction { conn in
            let existing = try await conn.queryFirst(
                "SELECT id\(weight == nil ? "" : ", weight") FROM RouteData WHERE modid = ? AND cmdid = ? "
                    + "AND serverip = ? AND serverport = ?",
                parameters(key, host))
            if let existing {
                guard let weight, let id = try? existing.decode(0, as: Int64.self),
                      (try? existing.decode(1, as: Int64.self)) != Int64(weight) else { return .unchanged }
                try await conn.execute("UPDATE RouteData SET weight = ? WHERE id = ?",
                                       [.integer(Int64(weight)), .integer(id)])
                return .changed(version: try await bumpVersion(key, on: conn))
            }
            if let weight {
                try await conn.execute(
                    "INSERT INTO RouteData (modid, cmdid, serverip, serverport, weight) VALUES (?, ?, ?, ?, ?)",
                    parameters(key, host) + [.integer(Int64(weight))])
            } else {
                try await conn.execute(
                    "INSERT INTO RouteData (modid, cmdid, serverip, serverport) VALUES (?, ?, ?, ?)",
                    parameters(key, host))
            }
            return .changed(version: try await bumpVersion(key, on: conn))
        }
    }

    /// Removes a host from a route. Throws ``StorageError``.
    @discardableResult
    public static func removeHost(_ host: Host, from key: RouteKey, on pool: ConnectionPool) async throws -> Outcome {
        try await pool.transaction { conn in
            let removed = try await conn.execute(
                "DELETE FROM RouteData WHERE modid = ? AND cmdid = ? AND serverip = ? AND serverport = ?",
                parameters(key, host))
            guard removed > 0 else { return .unchanged }
            return .changed(version: try await bumpVersion(key, on: conn))
        }
    }

    /// Every host of every route, or of one module's routes, ordered by modid, cmdid, address and port, with its
    /// weight: RouteData.weight where the column exists, 1 in a Lars database without it (found by asking for the
    /// column: one failed statement per call on such a database, nothing written).
    public static func listRoutes(modid: Int32? = nil, on pool: ConnectionPool) async throws -> [RouteEntry] {
        try await listRoutes(modid: modid, table: "RouteData", on: pool)
    }

    /// ``listRoutes(modid:on:)`` on another table of RouteData's shape (tests on shared server databases).
    static func listRoutes(modid: Int32?, table: String, on pool: ConnectionPool) async throws -> [RouteEntry] {
        var filter = ""
        var params: [SQLValue] = []
        if let modid {
            filter = " WHERE modid = ?"
            params.append(SQLValue(modid))
        }
        let order = " ORDER BY modid, cmdid, serverip, serverport"
        do {
            return try await pool.query("SELECT modid, cmdid, serverip, serverport, weight FROM \(table)" + filter
                                        + order, params).rows.compactMap(entry(from:))
        } catch StorageError.syntax {
            // No weight column (a Lars database): every host weighs 1. A missing table throws again below.
            return try await pool.query("SELECT modid, cmdid, serverip, serverport FROM \(table)" + filter + order,
                                        params).rows.compactMap(entry(from:))
        }
    }

    /// Sets a module's owner token (nil: takes it away, so the module takes any registration again). The name services
    /// read tokens with the routes (at their next reload: RouteVersion is bumped). Throws ``StorageError``, or
    /// ``RouteAdminError/badToken`` for an empty token or one over 255 bytes.
    public static func setModuleToken(_ token: String?, modid: Int32, on pool: ConnectionPool) async throws {
        if let token, token.isEmpty || token.utf8.count > 255 { throw RouteAdminError.badToken }
        try await pool.transaction { conn in
            if let token {
                try await conn.execute(
                    conn.dialect.upsert(table: "ModuleToken", columns: ["modid", "token"], conflict: ["modid"]),
                    [SQLValue(modid), .text(token)])
            } else {
                try await conn.execute("DELETE FROM ModuleToken WHERE modid = ?", [SQLValue(modid)])
            }
            let updated = try await conn.execute("UPDATE RouteVersion SET version = version + 1 WHERE id = 1")
            if updated == 0 { try await conn.execute("INSERT INTO RouteVersion (id, version) VALUES (1, 1)") }
        }
    }

    /// Every module's owner token. Throws ``StorageError`` (a Lars database without the table: the name service
    /// then knows no tokens).
    public static func moduleTokens(on db: some SQLQueryable) async throws -> [Int32: String] {
        var tokens: [Int32: String] = [:]
        for row in try await db.query("SELECT modid, token FROM ModuleToken", []).rows {
            if let modid = try? row.decode(0, as: Int32.self), let token = try? row.decode(1, as: String.self) {
                tokens[modid] = token
            }
        }
        return tokens
    }

    /// The current RouteVersion (0 when the row is missing).
    public static func currentVersion(on db: some SQLQueryable) async throws -> Int64 {
        try await db.queryFirst("SELECT version FROM RouteVersion WHERE id = 1")?.decode(0, as: Int64.self) ?? 0
    }

    /// A RouteData row as an entry; nil when a value is out of range (a negative port, an address above 32 bits).
    static func entry(from row: SQLRow) -> RouteEntry? {
        guard let modid = try? row.decode(0, as: Int32.self), let cmdid = try? row.decode(1, as: Int32.self),
              let ip = try? row.decode(2, as: UInt32.self), let port = try? row.decode(3, as: Int.self),
              let port16 = UInt16(exactly: port)
        else { return nil }
        // Weights out of range (a hand-edited row) are clamped: negative to 0, above the max to the max.
        let weight = row.values.count > 4 ? (try? row.decode(4, as: Int64.self)).map {
            UInt32(clamping: min(max($0, 0), Int64(HostWeight.max)))
        } ?? HostWeight.standard : HostWeight.standard
        return RouteEntry(key: RouteKey(modid: modid, cmdid: cmdid), host: Host(ip: ip, port: port16), weight: weight)
    }

    private static func parameters(_ key: RouteKey, _ host: Host) -> [SQLValue] {
        [SQLValue(key.modid), SQLValue(key.cmdid), .integer(Int64(host.ip)), .integer(Int64(host.port))]
    }

    /// Bumps RouteVersion (creating the row when missing) and records the change. Inside the caller's transaction.
    private static func bumpVersion(_ key: RouteKey, on conn: SQLConnection) async throws -> Int64 {
        let updated = try await conn.execute("UPDATE RouteVersion SET version = version + 1 WHERE id = 1")
        if updated == 0 {
            try await conn.execute("INSERT INTO RouteVersion (id, version) VALUES (1, 1)")
        }
        let version = try await currentVersion(on: conn)
        try await conn.execute("INSERT INTO RouteChange (modid, cmdid, version) VALUES (?, ?, ?)",
                               [SQLValue(key.modid), SQLValue(key.cmdid), .integer(version)])
        return version
    }
}

/// Why ``RouteAdmin`` refused an edit.
public enum RouteAdminError: Error, Hashable, Sendable, CustomStringConvertible {
    /// A weight outside 0...``HostWeight/max``.
    case weightOutOfRange(Int)
    /// A module token that is empty or longer than 255 bytes.
    case badToken

    public var description: String {
        switch self {
        case .weightOutOfRange(let w): return "weight must be 0...\(HostWeight.max), got \(w)"
        case .badToken: return "a module token must be 1...255 bytes"
        }
    }
}
