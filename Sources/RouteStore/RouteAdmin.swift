import LoadBalancing
import Storage

/// One host of a route as stored in RouteData.
public struct RouteEntry: Sendable, Hashable, CustomStringConvertible {
    /// The route.
    public var key: RouteKey
    /// The host.
    public var host: Host

    /// Creates an entry.
    public init(key: RouteKey, host: Host) {
        self.key = key
        self.host = host
    }

    public var description: String { "\(key.modid) \(key.cmdid) \(host)" }
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

    /// Adds a host to a route. Throws ``StorageError``.
    @discardableResult
    public static func addHost(_ host: Host, to key: RouteKey, on pool: ConnectionPool) async throws -> Outcome {
        try await pool.transaction { conn in
            let existing = try await conn.queryFirst(
                "SELECT id FROM RouteData WHERE modid = ? AND cmdid = ? AND serverip = ? AND serverport = ?",
                parameters(key, host))
            guard existing == nil else { return .unchanged }
            try await conn.execute(
                "INSERT INTO RouteData (modid, cmdid, serverip, serverport) VALUES (?, ?, ?, ?)",
                parameters(key, host))
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

    /// Every host of every route, or of one module's routes, ordered by modid, cmdid, address and port.
    public static func listRoutes(modid: Int32? = nil, on pool: ConnectionPool) async throws -> [RouteEntry] {
        var sql = "SELECT modid, cmdid, serverip, serverport FROM RouteData"
        var params: [SQLValue] = []
        if let modid {
            sql += " WHERE modid = ?"
            params.append(SQLValue(modid))
        }
        sql += " ORDER BY modid, cmdid, serverip, serverport"
        return try await pool.query(sql, params).rows.compactMap(entry(from:))
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
        return RouteEntry(key: RouteKey(modid: modid, cmdid: cmdid), host: Host(ip: ip, port: port16))
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
