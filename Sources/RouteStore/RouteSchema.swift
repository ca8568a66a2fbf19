import Storage

/// The Lars tables of the load-balancing system, created when missing on SQLite, MySQL/MariaDB and PostgreSQL.
///
///     RouteData(id, modid, cmdid, serverip, serverport)      one row per host of a route
///     RouteVersion(id, version)                               one row, id 1; bumped on every route change
///     RouteChange(id, modid, cmdid, version)                  which routes changed at which version
///     ServerCallStatus(modid, cmdid, ip, port, caller,        the reporter's upserts,
///                      succ_cnt, err_cnt, ts, overload)       key (modid, cmdid, ip, port, caller)
///
/// `serverip` and `ip` hold the IPv4 address as an unsigned number in reading order (127.0.0.1 = 2130706433), so
/// they are 64-bit columns (PostgreSQL has no unsigned 32-bit type). Table and column names are Lars's, unquoted,
/// so an existing Lars database works as it is.
public enum RouteSchema {
    /// The statements that create the tables (each `CREATE TABLE IF NOT EXISTS`) for a dialect.
    public static func createStatements(_ d: SQLDialect) -> [String] {
        let big = d.bigintType
        return [
            """
            CREATE TABLE IF NOT EXISTS RouteData (id \(d.autoIncrementPrimaryKey), modid INTEGER NOT NULL, \
            cmdid INTEGER NOT NULL, serverip \(big) NOT NULL, serverport INTEGER NOT NULL)\(d.tableOptions)
            """,
            """
            CREATE TABLE IF NOT EXISTS RouteVersion (id INTEGER NOT NULL PRIMARY KEY, \
            version \(big) NOT NULL)\(d.tableOptions)
            """,
            """
            CREATE TABLE IF NOT EXISTS RouteChange (id \(d.autoIncrementPrimaryKey), modid INTEGER NOT NULL, \
            cmdid INTEGER NOT NULL, version \(big) NOT NULL)\(d.tableOptions)
            """,
            """
            CREATE TABLE IF NOT EXISTS ServerCallStatus (modid INTEGER NOT NULL, cmdid INTEGER NOT NULL, \
            ip \(big) NOT NULL, port INTEGER NOT NULL, caller \(big) NOT NULL, succ_cnt \(big) NOT NULL, \
            err_cnt \(big) NOT NULL, ts \(big) NOT NULL, overload INTEGER NOT NULL, \
            PRIMARY KEY (modid, cmdid, ip, port, caller))\(d.tableOptions)
            """,
        ]
    }

    /// Creates the missing tables and the RouteVersion row (id 1, version 0) when it is missing. Idempotent; throws
    /// ``StorageError`` (for example `connectionFailed` when the database is unreachable).
    public static func create(on pool: ConnectionPool) async throws {
        for statement in createStatements(pool.dialect) {
            try await pool.execute(statement)
        }
        let insertVersion = pool.dialect.upsert(table: "RouteVersion", columns: ["id", "version"], conflict: ["id"],
                                                update: [])
        try await pool.execute(insertVersion, [1, 0])
    }
}
