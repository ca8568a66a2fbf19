import Storage
import Testing

@Suite struct DatabaseURLTests {
    @Test func parsesServerURLs() throws {
        let my = try DatabaseURL("mysql://user:p%40ss@127.0.0.1:3307/db?connect_timeout=3")
        #expect(my.driver == .mysql)
        #expect(my.user == "user" && my.password == "p@ss" && my.host == "127.0.0.1" && my.port == 3307)
        #expect(my.database == "db" && my.options["connect_timeout"] == "3")
        #expect(!my.description.contains("p@ss") && !my.description.contains("p%40ss"))
        let pg = try DatabaseURL("postgresql://u@[::1]/x")
        #expect(pg.driver == .postgres && pg.host == "::1" && pg.port == 5432 && pg.user == "u" && pg.password == "")
        #expect(try DatabaseURL("mariadb://h").port == 3306)
    }

    @Test func parsesSQLiteURLs() throws {
        #expect(try DatabaseURL("sqlite::memory:").isMemory)
        #expect(try DatabaseURL("sqlite:data/x.db").path == "data/x.db")
        #expect(try DatabaseURL("sqlite:///tmp/x.db").path == "/tmp/x.db")
        #expect(try DatabaseURL("sqlite:/tmp/x.db").path == "/tmp/x.db")
    }

    @Test(arguments: ["", "nothing", "redis://h", "sqlite:", "mysql:/h/db", "mysql://:3306/db", "postgres://h:99999/db",
                      "postgres://h:abc/db", "mysql://u:p@/db", "postgres://h/%zz"])
    func rejectsBadURLs(url: String) {
        do {
            _ = try DatabaseURL(url)
            Issue.record("accepted \(url)")
        } catch let error as StorageError {
            guard case .badURL(let detail) = error else {
                Issue.record("wrong error \(error)")
                return
            }
            #expect(detail.message.contains("bad database URL"))
        } catch {
            Issue.record("wrong error \(error)")
        }
    }

    @Test func poolRejectsBadURLAtOnce() async {
        await expectStorageError("badURL") { _ = try ConnectionPool(url: "nope://x", logger: testLogger) }
        #if !MySQL
        let error = await expectStorageError("badURL") { _ = try ConnectionPool(url: "mysql://u:p@127.0.0.1/db", logger: testLogger) }
        #expect(error?.message.contains("--traits MySQL") == true)
        #endif
        #if !PostgreSQL
        let pgError = await expectStorageError("badURL") { _ = try ConnectionPool(url: "postgres://u:p@127.0.0.1/db", logger: testLogger) }
        #expect(pgError?.message.contains("--traits PostgreSQL") == true)
        #endif
    }

    /// A backoff far longer than the test, so "inside the backoff" holds however slow the machine is.
    static var longBackoff: PoolConfiguration {
        var c = PoolConfiguration(minConnections: 0)
        c.reconnectBackoff = .seconds(600)
        c.maxReconnectBackoff = .seconds(600)
        return c
    }

    @Test func sqliteFileInMissingDirectoryFailsClearly() async throws {
        let pool = try ConnectionPool(url: "sqlite:/nonexistent-dir-\(UInt32.random(in: 0...UInt32.max))/x.db",
                                      configuration: Self.longBackoff, logger: testLogger)
        let error = await expectStorageError("connectionFailed") { _ = try await pool.query("SELECT 1") }
        #expect(error?.message.contains("cannot open") == true)
        #expect(pool.statistics.failed == 1)
        // Inside the backoff the next call fails fast with the same cause.
        let again = await expectStorageError("connectionFailed") { _ = try await pool.query("SELECT 1") }
        #expect(again?.message.contains("unreachable") == true)
        await pool.close()
    }
}

@Suite struct DialectTests {
    @Test func upsertText() {
        #expect(SQLDialect.sqlite.upsert(table: "t", columns: ["k", "v"], conflict: ["k"])
            == "INSERT INTO t (k, v) VALUES (?, ?) ON CONFLICT (k) DO UPDATE SET v = excluded.v")
        #expect(SQLDialect.mysql.upsert(table: "t", columns: ["k", "v"], conflict: ["k"])
            == "INSERT INTO t (k, v) VALUES (?, ?) ON DUPLICATE KEY UPDATE v = VALUES(v)")
        #expect(SQLDialect.postgres.upsert(table: "t", columns: ["k", "v"], conflict: ["k"], update: [])
            == "INSERT INTO t (k, v) VALUES (?, ?) ON CONFLICT (k) DO NOTHING")
    }

    @Test func schemaText() {
        #expect(SQLDialect.sqlite.autoIncrementPrimaryKey == "INTEGER PRIMARY KEY AUTOINCREMENT")
        #expect(SQLDialect.mysql.autoIncrementPrimaryKey.contains("AUTO_INCREMENT"))
        #expect(SQLDialect.postgres.autoIncrementPrimaryKey.contains("SERIAL"))
        #expect(SQLDialect.mysql.quoteIdentifier("a`b") == "`a``b`")
        #expect(SQLDialect.postgres.quoteIdentifier("a\"b") == "\"a\"\"b\"")
    }
}

@Suite struct SQLValueTests {
    @Test func literalsAndConversions() throws {
        let values: [SQLValue] = [nil, 1, 2.5, "x", true]
        #expect(values == [.null, .integer(1), .double(2.5), .text("x"), .integer(1)])
        #expect(SQLValue(Optional<String>.none) == .null)
        #expect(SQLValue([UInt8]([1, 2])) == .blob([1, 2]))
        #expect(Int(sqlValue: .text("12")) == 12)
        #expect(Bool(sqlValue: .text("t")) == true)
        #expect(String?(sqlValue: .null) == .some(nil))
        #expect(String(sqlValue: .null) == nil)
    }
}

@Suite struct PoolMaintenanceTests {
    @Test func idleConnectionsBeyondTheMinimumAreClosed() async throws {
        // 1 s: the three are still open when the test reads the count, even on a loaded machine.
        let config = PoolConfiguration(minConnections: 1, maxConnections: 3, idleTimeout: .seconds(1),
                                       maintenanceInterval: .milliseconds(20))
        let pool = try ConnectionPool(url: "sqlite::memory:", configuration: config, logger: testLogger)
        try await pool.withConnection { a in
            try await pool.withConnection { b in
                try await pool.withConnection { c in
                    for connection in [a, b, c] { _ = try await connection.query("SELECT 1") }
                }
            }
        }
        #expect(pool.statistics.open == 3)
        // The idle timeout is a timer: poll the statistics, bounded.
        let deadline = ContinuousClock.now + .seconds(15)
        while pool.statistics.open > 1 && ContinuousClock.now < deadline {
            try await Task.sleep(for: .milliseconds(20))
        }
        let stats = pool.statistics
        #expect(stats.open == 1 && stats.idle == 1, "\(stats)")
        #expect(stats.closed == 2, "\(stats)")
        #expect(try await pool.queryFirst("SELECT 1")?.decode(0, as: Int.self) == 1)
        await pool.close()
    }

    @Test func healthCheckBeforeEveryReuseStillServes() async throws {
        let config = PoolConfiguration(minConnections: 0, maxConnections: 2, healthCheckAfterIdle: .zero)
        let pool = try ConnectionPool(url: "sqlite::memory:", configuration: config, logger: testLogger)
        for i in 0..<20 {
            #expect(try await pool.queryFirst("SELECT ?", [.integer(Int64(i))])?.decode(0, as: Int.self) == i)
        }
        #expect(pool.statistics.created == 1)
        await pool.close()
    }
}
