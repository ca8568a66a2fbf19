import Storage

/// The Lars tables of the load-balancing system, created when missing on SQLite, MySQL/MariaDB and PostgreSQL.
///
///     RouteData(id, modid, cmdid, serverip, serverport,      one row per host of a route; `weight` is ours
///               weight)                                        (absent from a Lars database: every host weighs 1)
///     RouteVersion(id, version)                               one row, id 1; bumped on every route change
///     RouteChange(id, modid, cmdid, version)                  which routes changed at which version
///     ServerCallStatus(modid, cmdid, ip, port, caller,        the reporter's upserts,
///                      succ_cnt, err_cnt, ts, overload)       key (modid, cmdid, ip, port, caller)
///     HostRegistration(modid, cmdid, ip, port,                Switchyard's: self-registered hosts, so every
///                      expires_ms, updated_ms, source,        name service on the database serves them; key
///                      host_load, host_capacity, weight)      (modid, cmdid, ip, port); times in Unix ms
///     ModuleToken(modid, token)                               Switchyard's: a module's owner token; its
///                                                             registrations must carry it
///     StateChange(id, modid, payload, created_ms)             Switchyard's: the state relay's changes, kept for
///                                                             a retention window
///     StateChangeLock(id)                                     Switchyard's: one row (id 1), locked by the state
///                                                             relay's inserts on MySQL (ids commit in order)
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
            cmdid INTEGER NOT NULL, serverip \(big) NOT NULL, serverport INTEGER NOT NULL, \
            \(weightColumn))\(d.tableOptions)
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
            """
            CREATE TABLE IF NOT EXISTS HostRegistration (modid INTEGER NOT NULL, cmdid INTEGER NOT NULL, \
            ip \(big) NOT NULL, port INTEGER NOT NULL, expires_ms \(big) NOT NULL, updated_ms \(big) NOT NULL, \
            source \(big) NOT NULL, host_load \(big), host_capacity \(big), weight \(big), \
            PRIMARY KEY (modid, cmdid, ip, port))\(d.tableOptions)
            """,
            """
            CREATE TABLE IF NOT EXISTS ModuleToken (modid INTEGER NOT NULL PRIMARY KEY, \
            token \(d.varchar(255)) NOT NULL)\(d.tableOptions)
            """,
            """
            CREATE TABLE IF NOT EXISTS StateChange (id \(d.autoIncrementPrimaryKey), modid INTEGER NOT NULL, \
            payload \(d.blobType) NOT NULL, created_ms \(big) NOT NULL)\(d.tableOptions)
            """,
            "CREATE TABLE IF NOT EXISTS StateChangeLock (id INTEGER NOT NULL PRIMARY KEY)\(d.tableOptions)",
        ]
    }

    /// The definition of our column beside Lars's: a host's weight (``HostWeight``), 1 unless set.
    static let weightColumn = "weight INTEGER NOT NULL DEFAULT 1"

    /// Whether RouteData has the `weight` column (a table made by Lars, or by Switchyard before weights, has not).
    /// Throws ``StorageError`` when the database cannot be asked (not when the column is missing). On a pool, not in
    /// a transaction: a failed statement would abort a PostgreSQL transaction.
    public static func hasWeightColumn(on pool: ConnectionPool, table: String = "RouteData") async throws -> Bool {
        do {
            _ = try await pool.query("SELECT weight FROM \(table) WHERE 1 = 0", [])
            return true
        } catch StorageError.syntax {
            return false  // no such column (every driver reports an unknown column as a syntax error)
        }
    }

    /// Adds the `weight` column to a RouteData without it (every host then weighs 1); nothing when it is there.
    /// The Lars columns and rows are untouched, and Lars's own statements (which name their columns) keep working.
    public static func addWeightColumnIfMissing(on pool: ConnectionPool, table: String = "RouteData") async throws {
        guard try await !hasWeightColumn(on: pool, table: table) else { return }
        do {
            try await pool.execute("ALTER TABLE \(table) ADD COLUMN \(weightColumn)")
        } catch {
            // Another process may have added it at the same moment: only an error if it is still missing.
            if try await !hasWeightColumn(on: pool, table: table) { throw error }
        }
    }

    /// The statement that takes the state relay's insert lock in a transaction (and makes its row when missing):
    /// an upsert of StateChangeLock's row 1 that changes nothing but locks the row until the commit.
    public static func lockStateChanges(_ d: SQLDialect) -> String {
        d.upsert(table: "StateChangeLock", columns: ["id"], conflict: ["id"], update: [])
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
