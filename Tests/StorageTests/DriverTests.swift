import Foundation
import Storage
import Synchronization
import Testing
import TestSupport

/// Tests run on every driver of the build. Serialized: the server tests share one server, and one of them
/// restarts it.
@Suite(.serialized)
struct DriverTests {
    @Test(arguments: TestDatabase.all)
    func roundTripsEveryColumnType(db: TestDatabase) async throws {
        try await withPool(db) { pool in
            let d = pool.dialect
            let table = uniqueTable("types")
            try await pool.execute("""
                CREATE TABLE \(table) (id \(d.autoIncrementPrimaryKey), i \(d.bigintType), f \(d.doubleType),
                s \(d.textType), b \(d.blobType))\(d.tableOptions)
                """)
            let rows: [[SQLValue]] = [
                [.integer(0), .double(0), .text(""), .blob([])],
                [.integer(Int64.max), .double(3.141592653589793), .text("héllo wörld"), .blob(Array(0...255))],
                [.integer(Int64.min), .double(-1.5e300), .text("日本語 Ελληνικά עברית 🚀👩‍👩‍👧"), .blob([0, 0, 0])],
                [.integer(-1), .double(2.5e-300), .text("tab\there\nnew line \u{7F} ünïcödé"), .blob([0xFF, 0x00, 0x5C])],
                [.null, .null, .null, .null],
            ]
            var ids: [Int64] = []
            for row in rows {
                ids.append(try await pool.insert("INSERT INTO \(table) (i, f, s, b) VALUES (?, ?, ?, ?)", row))
            }
            #expect(Set(ids).count == rows.count)
            for (id, expected) in zip(ids, rows) {
                let row = try #require(try await pool.queryFirst("SELECT i, f, s, b FROM \(table) WHERE id = ?", [.integer(id)]))
                #expect(row.values == expected, "row \(id)")
            }
            // Typed access.
            let row = try #require(try await pool.queryFirst("SELECT id, i, f, s, b FROM \(table) WHERE id = ?", [.integer(ids[1])]))
            #expect(try row.decode("i", as: Int64.self) == Int64.max)
            #expect(try row.decode("f", as: Double.self) == 3.141592653589793)
            #expect(try row.decode("s", as: String.self) == "héllo wörld")
            #expect(try row.decode("b", as: [UInt8].self) == Array(0...255))
            #expect(try row.decode("S", as: String?.self) == "héllo wörld")
            let nullRow = try #require(try await pool.queryFirst("SELECT i, s FROM \(table) WHERE id = ?", [.integer(ids[4])]))
            #expect(try nullRow.decode("i", as: Int64?.self) == nil)
            #expect(throws: StorageError.self) { try nullRow.decode("s", as: String.self) }
            #expect(throws: StorageError.self) { try nullRow.decode("missing", as: String?.self) }
            let nulls = try await pool.query("SELECT COUNT(*) AS n FROM \(table) WHERE s IS NULL AND b IS NULL")
            #expect(try nulls.rows[0].decode("n", as: Int64.self) == 1)
        }
    }

    @Test(arguments: TestDatabase.all)
    func roundTripsOneMebibyteBlob(db: TestDatabase) async throws {
        try await withPool(db) { pool in
            let d = pool.dialect
            let table = uniqueTable("blobs")
            try await pool.execute("CREATE TABLE \(table) (k \(d.varchar(16)) PRIMARY KEY, b \(d.blobType), t \(d.textType))\(d.tableOptions)")
            var generator = SystemRandomNumberGenerator()
            let blob = (0..<(1 << 20)).map { _ in UInt8.random(in: 0...255, using: &generator) }
            let text = String(repeating: "ü€𝄞x", count: (1 << 20) / 10)
            try await pool.execute("INSERT INTO \(table) (k, b, t) VALUES (?, ?, ?)", ["big", .blob(blob), .text(text)])
            let row = try #require(try await pool.queryFirst("SELECT b, t FROM \(table) WHERE k = ?", ["big"]))
            let back = try row.decode("b", as: [UInt8].self)
            #expect(back.count == blob.count)
            #expect(back == blob)
            #expect(try row.decode("t", as: String.self) == text)
        }
    }

    @Test(arguments: TestDatabase.all)
    func parametersAreStoredLiterally(db: TestDatabase) async throws {
        try await withPool(db) { pool in
            let d = pool.dialect
            let table = uniqueTable("x")
            try await pool.execute("CREATE TABLE \(table) (id \(d.autoIncrementPrimaryKey), s \(d.textType))\(d.tableOptions)")
            let nasty = [
                "O'Brien", "''", "\"double\" quotes", "back\\slash", "\\'", "trailing\\",
                "'; DROP TABLE \(table); --", "'); DELETE FROM \(table); --", "? and $1 and :name", "%_*",
                "/* comment */", "-- comment", "\\x00\\n",
            ]
            for value in nasty {
                try await pool.execute("INSERT INTO \(table) (s) VALUES (?)", [.text(value)])
            }
            let stored = try await pool.query("SELECT s FROM \(table) ORDER BY id").rows.map { try $0.decode(0, as: String.self) }
            #expect(stored == nasty)
            for value in nasty {
                let found = try await pool.query("SELECT COUNT(*) FROM \(table) WHERE s = ?", [.text(value)])
                #expect(try found.rows[0].decode(0, as: Int64.self) == 1, "\(value)")
            }
            // A `?` inside a string literal or comment is not a placeholder.
            let row = try #require(try await pool.queryFirst(
                "SELECT 'what?' AS q, ? AS p /* is this? */ -- or this?\n", ["yes"]))
            #expect(row.values == [.text("what?"), .text("yes")])
        }
    }

    @Test(arguments: TestDatabase.all)
    func transactionsCommitAndRollBack(db: TestDatabase) async throws {
        try await withPool(db) { pool in
            let d = pool.dialect
            let table = uniqueTable("tx")
            try await pool.execute("CREATE TABLE \(table) (k \(d.varchar(32)) PRIMARY KEY, v \(d.bigintType))\(d.tableOptions)")

            let value = try await pool.transaction { conn in
                try await conn.execute("INSERT INTO \(table) (k, v) VALUES (?, ?)", ["a", 1])
                try await conn.execute("INSERT INTO \(table) (k, v) VALUES (?, ?)", ["b", 2])
                return "done"
            }
            #expect(value == "done")

            struct Abort: Error {}
            await #expect(throws: Abort.self) {
                try await pool.transaction { conn in
                    try await conn.execute("INSERT INTO \(table) (k, v) VALUES (?, ?)", ["c", 3])
                    try await conn.execute("UPDATE \(table) SET v = ? WHERE k = ?", [100, "a"])
                    throw Abort()
                }
            }
            // A failing statement inside rolls back everything before it.
            await expectStorageError("constraintViolation") {
                try await pool.transaction { conn in
                    try await conn.execute("INSERT INTO \(table) (k, v) VALUES (?, ?)", ["d", 4])
                    try await conn.execute("INSERT INTO \(table) (k, v) VALUES (?, ?)", ["a", 5])
                }
            }
            let rows = try await pool.query("SELECT k, v FROM \(table) ORDER BY k").rows.map(\.values)
            #expect(rows == [["a", 1], ["b", 2]])
            // Affected rows count matched rows on every database, also when the value does not change.
            #expect(try await pool.execute("UPDATE \(table) SET v = v WHERE k = ?", ["a"]) == 1)
            #expect(try await pool.execute("DELETE FROM \(table) WHERE k IN (?, ?)", ["a", "b"]) == 2)
        }
    }

    @Test(arguments: TestDatabase.all)
    func errorsMapToTheirKind(db: TestDatabase) async throws {
        try await withPool(db) { pool in
            let d = pool.dialect
            let parent = uniqueTable("parent")
            let child = uniqueTable("child")
            try await pool.execute("CREATE TABLE \(parent) (id \(d.bigintType) PRIMARY KEY, name \(d.varchar(32)) NOT NULL UNIQUE)\(d.tableOptions)")
            try await pool.execute("""
                CREATE TABLE \(child) (id \(d.bigintType) PRIMARY KEY, parent_id \(d.bigintType) NOT NULL,
                FOREIGN KEY (parent_id) REFERENCES \(parent)(id))\(d.tableOptions)
                """)
            try await pool.execute("INSERT INTO \(parent) (id, name) VALUES (?, ?)", [1, "one"])

            let unique = await expectStorageError("constraintViolation") {
                try await pool.execute("INSERT INTO \(parent) (id, name) VALUES (?, ?)", [2, "one"])
            }
            #expect(unique?.message.isEmpty == false)
            #expect(unique?.code != nil)
            await expectStorageError("constraintViolation") {
                try await pool.execute("INSERT INTO \(parent) (id, name) VALUES (?, ?)", [1, "uno"])
            }
            await expectStorageError("constraintViolation") {
                try await pool.execute("INSERT INTO \(parent) (id, name) VALUES (?, ?)", [3, .null])
            }
            await expectStorageError("constraintViolation") {
                try await pool.execute("INSERT INTO \(child) (id, parent_id) VALUES (?, ?)", [1, 99])
            }
            await expectStorageError("syntax") { try await pool.execute("SELEKT 1") }
            await expectStorageError("syntax") { try await pool.execute("SELECT * FROM no_such_table_here") }
            // The pool still works after errors.
            #expect(try await pool.queryFirst("SELECT COUNT(*) FROM \(parent)")?.decode(0, as: Int64.self) == 1)
        }
    }

    @Test(arguments: TestDatabase.all)
    func upsertHelperWorks(db: TestDatabase) async throws {
        try await withPool(db) { pool in
            let d = pool.dialect
            let table = uniqueTable("up")
            try await pool.execute("CREATE TABLE \(table) (host \(d.varchar(64)) PRIMARY KEY, calls \(d.bigintType), note \(d.textType))\(d.tableOptions)")
            let upsert = d.upsert(table: table, columns: ["host", "calls", "note"], conflict: ["host"])
            try await pool.execute(upsert, ["a", 1, "first"])
            try await pool.execute(upsert, ["a", 5, "second"])
            try await pool.execute(upsert, ["b", 2, nil])
            let rows = try await pool.query("SELECT host, calls, note FROM \(table) ORDER BY host").rows.map(\.values)
            #expect(rows == [["a", 5, "second"], ["b", 2, nil]])
            let keep = d.upsert(table: table, columns: ["host", "calls", "note"], conflict: ["host"], update: [])
            try await pool.execute(keep, ["a", 9, "ignored"])
            #expect(try await pool.queryFirst("SELECT calls FROM \(table) WHERE host = ?", ["a"])?.decode(0, as: Int.self) == 5)
        }
    }

    @Test(arguments: TestDatabase.all)
    func fiftyUsersShareFourConnections(db: TestDatabase) async throws {
        let config = PoolConfiguration(minConnections: 0, maxConnections: 4, acquireTimeout: .seconds(30))
        try await withPool(db, config) { pool in
            let d = pool.dialect
            let table = uniqueTable("users")
            try await pool.execute("CREATE TABLE \(table) (id \(d.autoIncrementPrimaryKey), name \(d.varchar(64)) UNIQUE, n \(d.bigintType))\(d.tableOptions)")
            try await withThrowingTaskGroup(of: Void.self) { group in
                for user in 0..<50 {
                    group.addTask {
                        try await pool.transaction { conn in
                            let id = try await conn.insert("INSERT INTO \(table) (name, n) VALUES (?, ?)", [.text("user-\(user)"), 0])
                            try await conn.execute("UPDATE \(table) SET n = n + ? WHERE id = ?", [.integer(Int64(user)), .integer(id)])
                        }
                        let row = try await pool.queryFirst("SELECT n FROM \(table) WHERE name = ?", [.text("user-\(user)")])
                        #expect(try row?.decode(0, as: Int.self) == user)
                    }
                }
                try await group.waitForAll()
            }
            let count = try await pool.queryFirst("SELECT COUNT(*), SUM(n) FROM \(table)")
            #expect(try count?.decode(0, as: Int.self) == 50)
            #expect(try count?.decode(1, as: Int.self) == (0..<50).reduce(0, +))
            let stats = pool.statistics
            #expect(stats.highWater <= 4, "\(stats)")
            #expect(stats.highWater >= 1)
            #expect(stats.inUse == 0 && stats.waiting == 0, "\(stats)")
            #expect(stats.timeouts == 0 && stats.failed == 0, "\(stats)")
        }
    }

    @Test(arguments: TestDatabase.all)
    func waiterPastAcquireTimeoutGetsTimeoutError(db: TestDatabase) async throws {
        let config = PoolConfiguration(minConnections: 0, maxConnections: 1, acquireTimeout: .milliseconds(200))
        try await withPool(db, config) { pool in
            let (acquired, acquiredContinuation) = AsyncStream<Void>.makeStream()
            let (release, releaseContinuation) = AsyncStream<Void>.makeStream()
            async let holder: Void = pool.withConnection { _ in
                acquiredContinuation.yield()
                for await _ in release { break }
            }
            for await _ in acquired { break }
            let started = ContinuousClock.now
            let error = await expectStorageError("timeout") { _ = try await pool.query("SELECT 1") }
            let waited = ContinuousClock.now - started
            #expect(waited >= .milliseconds(190) && waited < .seconds(5), "waited \(waited)")
            #expect(error?.message.contains("no connection free") == true)
            #expect(pool.statistics.timeouts == 1)
            releaseContinuation.yield()
            try await holder
            // The connection is free again.
            #expect(try await pool.queryFirst("SELECT 1")?.decode(0, as: Int.self) == 1)
        }
    }

    @Test(arguments: TestDatabase.all)
    func callbacksRunOnTheCallersExecutor(db: TestDatabase) async throws {
        try await withPool(db) { pool in
            let executor = QueueExecutor()
            let result = await withCheckedContinuation { (continuation: CheckedContinuation<(Result<SQLResult, StorageError>, Bool), Never>) in
                pool.query("SELECT ? AS a", [.integer(42)], on: executor) { result in
                    continuation.resume(returning: (result, executor.isCurrent))
                }
            }
            #expect(result.1, "completion ran off the executor")
            #expect(try result.0.get().rows.first?.decode("a", as: Int.self) == 42)
            let failure = await withCheckedContinuation { (continuation: CheckedContinuation<Result<SQLResult, StorageError>, Never>) in
                pool.query("SELEKT", [], on: executor) { continuation.resume(returning: $0) }
            }
            #expect(throws: StorageError.self) { try failure.get() }
            // acquire/release by callback.
            let connection = try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<SQLConnection, Error>) in
                pool.acquire(on: executor) { continuation.resume(with: $0.mapError { $0 }) }
            }
            #expect(pool.statistics.inUse == 1)
            pool.release(connection)
            #expect(pool.statistics.inUse == 0)
        }
    }

    @Test(arguments: TestDatabase.all)
    func bareConnectionWorks(db: TestDatabase) async throws {
        let connection = try await SQLConnection.connect(to: db.url(), logger: testLogger)
        #expect(try await connection.queryFirst("SELECT ? + 1", [.integer(41)])?.decode(0, as: Int.self) == 42)
        #expect(await connection.ping())
        await connection.close()
        #expect(connection.isBroken)
        await expectStorageError("connectionLost") { _ = try await connection.query("SELECT 1") }
    }

    @Test(arguments: TestDatabase.all)
    func closedPoolRefusesCalls(db: TestDatabase) async throws {
        let pool = try makePool(db)
        #expect(try await pool.queryFirst("SELECT 1")?.decode(0, as: Int.self) == 1)
        await pool.close()
        await expectStorageError("poolClosed") { _ = try await pool.query("SELECT 1") }
    }
}
