#if MySQL || PostgreSQL
import Foundation
import Storage
import Testing
import TestSupport

/// Server-only tests; part of the serialized ``DriverTests`` suite because one of them stops the server.
extension DriverTests {
    @Test(arguments: TestDatabase.servers)
    func wrongPasswordFailsClearlyAndFast(db: TestDatabase) async throws {
        var url = try DatabaseURL(db.url())
        url.password = "definitely-not-the-password"
        let pool = try ConnectionPool(url: url, configuration: PoolConfiguration(minConnections: 0), logger: testLogger)
        let started = ContinuousClock.now
        let error = await expectStorageError("authenticationFailed") { _ = try await pool.query("SELECT 1") }
        #expect(ContinuousClock.now - started < .seconds(10))
        #expect(error?.message.contains(url.user) == true, "\(String(describing: error))")
        #expect(error?.message.contains(url.password) == false)
        // Within the backoff the same cause comes back at once.
        await expectStorageError("authenticationFailed") { _ = try await pool.query("SELECT 1") }
        await pool.close()
    }

    @Test(arguments: TestDatabase.servers)
    func unreachableServerFailsClearlyAndFast(db: TestDatabase) async throws {
        var url = try DatabaseURL(db.url())
        url.port = 1  // nothing listens there
        let pool = try ConnectionPool(url: url, configuration: PoolConfiguration(minConnections: 0, connectTimeout: .seconds(2)),
                                      logger: testLogger)
        let started = ContinuousClock.now
        let error = await expectStorageError("connectionFailed") { _ = try await pool.query("SELECT 1") }
        #expect(ContinuousClock.now - started < .seconds(10))
        #expect(error?.message.contains("127.0.0.1") == true, "\(String(describing: error))")
        await pool.close()
    }

    @Test(arguments: TestDatabase.servers)
    func poolRecoversWhenTheServerRestarts(db: TestDatabase) async throws {
        let config = PoolConfiguration(minConnections: 1, maxConnections: 3, acquireTimeout: .seconds(5),
                                       connectTimeout: .seconds(3), reconnectBackoff: .milliseconds(50),
                                       maxReconnectBackoff: .milliseconds(400), maintenanceInterval: .milliseconds(100))
        try await withPool(db, config) { pool in
            let d = pool.dialect
            let table = uniqueTable("restart")
            try await pool.execute("CREATE TABLE \(table) (k \(d.varchar(16)) PRIMARY KEY, v \(d.bigintType))\(d.tableOptions)")
            try await pool.execute("INSERT INTO \(table) (k, v) VALUES (?, ?)", ["before", 1])
            // Hold two connections at once so that the pool has more than one to lose.
            try await pool.withConnection { a in
                try await pool.withConnection { b in
                    _ = try await a.query("SELECT 1")
                    _ = try await b.query("SELECT 1")
                }
            }
            let before = pool.statistics

            try await runDBScript("stop-\(db.serverName)")
            do {
                // During the outage: calls fail fast with a connection error, none hangs.
                for attempt in 0..<4 {
                    let started = ContinuousClock.now
                    do {
                        _ = try await pool.query("SELECT v FROM \(table) WHERE k = ?", ["before"])
                        Issue.record("query \(attempt) succeeded while the server was down")
                    } catch let error as StorageError {
                        #expect(["connectionLost", "connectionFailed"].contains(error.kind), "\(error)")
                    }
                    #expect(ContinuousClock.now - started < .seconds(5))
                }
            } catch {
                try? await runDBScript("start-\(db.serverName)")
                throw error
            }
            try await runDBScript("start-\(db.serverName)")

            // The server accepts connections again (the script waited for that); the pool must serve the next
            // call, at worst after its capped backoff has run out.
            let deadline = ContinuousClock.now + .seconds(10)
            var recovered = false
            var lastError: (any Error)?
            while !recovered && ContinuousClock.now < deadline {
                do {
                    let row = try await pool.queryFirst("SELECT v FROM \(table) WHERE k = ?", ["before"])
                    #expect(try row?.decode(0, as: Int.self) == 1)
                    recovered = true
                } catch {
                    lastError = error
                    try await Task.sleep(for: .milliseconds(100))  // the backoff is a timer, not an event
                }
            }
            #expect(recovered, "pool did not recover: \(String(describing: lastError)); \(pool.statistics)")
            try await pool.execute("INSERT INTO \(table) (k, v) VALUES (?, ?)", ["after", 2])
            let after = pool.statistics
            #expect(after.created > before.created, "\(after)")
            #expect(after.failed > 0, "\(after)")
            #expect(after.consecutiveFailures == 0)
            #expect(after.inUse == 0)
            try await pool.execute("DROP TABLE \(table)")
        }
    }
}
#endif

