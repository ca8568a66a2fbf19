import Foundation
@testable import Storage
import Synchronization
import Testing
import TestSupport

/// `count` rows `(x, s)`: x from 1 in order, s a 64-character text.
func generatedRows(_ dialect: SQLDialect, count: Int) -> String {
    switch dialect {
    case .sqlite:
        return "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x+1 FROM c WHERE x < \(count)) "
            + "SELECT x, printf('%064d', x) AS s FROM c"
    case .mysql:
        // MariaDB stops a recursion at max_recursive_iterations (1000 by default in 10.11).
        return "SET STATEMENT max_recursive_iterations = \(count + 1) FOR "
            + "WITH RECURSIVE c(x) AS (SELECT CAST(1 AS SIGNED) UNION ALL SELECT x+1 FROM c WHERE x < \(count)) "
            + "SELECT x, LPAD(x, 64, '0') AS s FROM c"
    case .postgres:
        return "SELECT x, lpad(x::text, 64, '0') AS s FROM generate_series(1, \(count)) AS x"
    }
}

/// The resident set of this process, from /proc/self/status.
func residentBytes() -> Int {
    guard let status = try? String(contentsOfFile: "/proc/self/status", encoding: .utf8),
          let line = status.split(separator: "\n").first(where: { $0.hasPrefix("VmRSS:") }),
          let kib = Int(line.split(separator: " ", omittingEmptySubsequences: true).dropFirst().first ?? "")
    else { return 0 }
    return kib * 1024
}

/// Set once a statement answered.
final class AnsweredFlag: Sendable {
    private let value = Atomic<Bool>(false)
    func set() { value.store(true, ordering: .relaxed) }
    var isSet: Bool { value.load(ordering: .relaxed) }
}

/// Row streams (part of the serialized ``DriverTests``: the servers are shared and memory is measured).
extension DriverTests {
    @Test(arguments: TestDatabase.all)
    func streamsAMillionRowsInOrderWithFlatMemory(db: TestDatabase) async throws {
        try await withPool(db) { pool in
            let count = 1_000_000
            let stream = try await pool.stream(generatedRows(pool.dialect, count: count), [], batchRows: 1000)
            #expect(stream.columns.names.map { $0.lowercased() } == ["x", "s"])
            #expect(stream.columns.types == [.integer, .text])
            let start = residentBytes()
            var peak = start
            var expected: Int64 = 1
            var batches = 0
            while let batch = try await stream.next() {
                #expect(batch.count <= 1000 && !batch.isEmpty)
                for row in batch {
                    guard row[0] == .integer(expected) else {
                        Issue.record("row \(expected) came as \(row[0])")
                        await stream.cancel()
                        return
                    }
                    expected += 1
                }
                batches += 1
                if batches % 50 == 0 { peak = max(peak, residentBytes()) }
            }
            #expect(expected == Int64(count) + 1)
            #expect(stream.rowsFetched == count)
            #expect(stream.isFinished)
            let growth = peak - start
            // Held at once (as `query` does), the rows take about 250 MiB. The bound leaves room for the suites
            // that run beside this one in the same process (their allocations count in its RSS too). AddressSanitizer
            // keeps freed memory in its quarantine (256 MiB), so RSS says nothing there; rowsFetched above still
            // bounds the read-ahead.
            let environment = ProcessInfo.processInfo.environment
            if environment["ASAN_OPTIONS"] == nil && environment["TSAN_OPTIONS"] == nil {
                #expect(growth < 64 << 20, "RSS grew by \(growth >> 20) MiB while streaming")
            }
            #expect(pool.statistics.inUse == 0)
        }
    }

    @Test(arguments: TestDatabase.all)
    func aStreamReadsOnlyWhatIsAskedForAndCancelsCleanly(db: TestDatabase) async throws {
        try await withPool(db) { pool in
            try await pool.withConnection { connection in
                let stream = try await connection.stream(generatedRows(pool.dialect, count: 1_000_000), [],
                                                         batchRows: 100)
                for _ in 0..<3 {
                    let batch = try #require(try await stream.next())
                    #expect(batch.count == 100)
                }
                let fetched = stream.rowsFetched
                #expect(fetched >= 300 && fetched <= 301, "fetched \(fetched)")
                // A statement submitted meanwhile waits behind the open stream.
                let answered = AnsweredFlag()
                let waiting = Task {
                    let row = try await connection.queryFirst("SELECT 2 AS two")
                    answered.set()
                    return row
                }
                // Nothing is read while nobody asks (an absence: give it time to show up).
                try await Task.sleep(for: .milliseconds(200))
                #expect(stream.rowsFetched == fetched)
                #expect(!answered.isSet)
                let started = ContinuousClock.now
                await stream.cancel()
                #expect(ContinuousClock.now - started < .seconds(5) * testTimeScale)
                #expect(stream.isFinished)
                #expect(try await stream.next() == nil)
                #expect(try await waiting.value?.decode("two", as: Int64.self) == 2)
                let row = try await connection.queryFirst("SELECT 1 AS one")
                #expect(try row?.decode("one", as: Int64.self) == 1)
                #expect(!connection.isBroken)
            }
            #expect(pool.statistics.closed == 0)
        }
    }

    @Test(arguments: TestDatabase.all)
    func aStreamWithATimeoutIsCancelledByIt(db: TestDatabase) async throws {
        try await withPool(db, PoolConfiguration(minConnections: 0, maxConnections: 1)) { pool in
            // A statement slow to give its first row: the start (or the first batch) times out.
            let started = ContinuousClock.now
            await expectStorageError("timeout") {
                let stream = try await pool.stream(slowStatement(pool.dialect), [], batchRows: 10,
                                                   timeout: .milliseconds(200))
                while try await stream.next() != nil {}
            }
            #expect(ContinuousClock.now - started < .seconds(3) * testTimeScale)
            // A caller that stops reading: the timeout ends the stream and frees the connection.
            // (MariaDB materializes the recursive CTE before its first row: the timeout leaves room for that.)
            let stream = try await pool.stream(generatedRows(pool.dialect, count: 100_000), [], batchRows: 100,
                                               timeout: .seconds(5))
            _ = try await stream.next()
            #expect(await eventually(timeout: .seconds(20)) { stream.isFinished })
            #expect(await eventually { pool.statistics.inUse == 0 })
            await expectStorageError("timeout") { _ = try await stream.next() }
            #expect(try await stream.next() == nil)
            #expect(stream.rowsFetched < 100_000)
            let row = try await pool.queryFirst("SELECT 3 AS three")
            #expect(try row?.decode("three", as: Int64.self) == 3)
            #expect(pool.statistics.closed == 0 && pool.statistics.created == 1, "\(pool.statistics)")
            #expect(pool.statistics.statementTimeouts == 2 && pool.statistics.openStreams == 0, "\(pool.statistics)")
        }
    }

    @Test(arguments: TestDatabase.all)
    func aPoolStreamHoldsItsConnectionUntilItEnds(db: TestDatabase) async throws {
        try await withPool(db, PoolConfiguration(minConnections: 0, maxConnections: 2)) { pool in
            let sql = generatedRows(pool.dialect, count: 250)
            // Read to the end with the callback variant on an executor.
            let executor = QueueExecutor()
            let stream = try await pool.stream(sql, [], batchRows: 100)
            #expect(pool.statistics.inUse == 1 && pool.statistics.openStreams == 1)
            var total = 0
            while true {
                let batch = try await withCheckedThrowingContinuation { continuation in
                    stream.next(on: executor) { result in
                        #expect(executor.isCurrent)
                        continuation.resume(with: result)
                    }
                }
                guard let batch else { break }
                total += batch.count
            }
            #expect(total == 250)
            #expect(pool.statistics.inUse == 0 && pool.statistics.openStreams == 0)
            // Cancelled half way.
            let second = try await pool.stream(sql, [], batchRows: 100)
            _ = try await second.next()
            await second.cancel()
            #expect(pool.statistics.inUse == 0)
            // Released without finishing: cancelled, and the connection comes back.
            var third: SQLRowStream? = try await pool.stream(sql, [], batchRows: 100)
            _ = try await third?.next()
            #expect(pool.statistics.inUse == 1)
            third = nil
            #expect(await eventually { pool.statistics.inUse == 0 })
            #expect(pool.statistics.closed == 0, "\(pool.statistics)")
            // A statement that returns no rows streams as an empty, finished stream.
            let table = uniqueTable("streamddl")
            let ddl = try await pool.stream("CREATE TABLE \(table) (k \(pool.dialect.bigintType))", [], batchRows: 10)
            #expect(try await ddl.next() == nil)
            #expect(pool.statistics.inUse == 0)
            try await pool.execute("DROP TABLE \(table)")
        }
    }

    @Test(arguments: TestDatabase.all)
    func columnTypesRoundTripThroughQueryAndStream(db: TestDatabase) async throws {
        try await withPool(db) { pool in
            let d = pool.dialect
            let table = uniqueTable("coltypes")
            try await pool.execute("""
                CREATE TABLE \(table) (k \(d.bigintType) PRIMARY KEY, i \(d.bigintType), f \(d.doubleType),
                s \(d.textType), b \(d.blobType))\(d.tableOptions)
                """)
            var generator = SystemRandomNumberGenerator()
            let blob = (0..<(1 << 20)).map { _ in UInt8.random(in: 0...255, using: &generator) }
            let rows: [[SQLValue]] = [
                [.integer(1), .integer(-42), .double(2.5), .text("日本語 Ελληνικά 🚀 ünïcödé"), .blob(blob)],
                [.integer(2), .null, .null, .null, .null],
                [.integer(3), .integer(Int64.max), .double(-1e300), .text(""), .blob([0, 255])],
            ]
            for row in rows {
                try await pool.execute("INSERT INTO \(table) (k, i, f, s, b) VALUES (?, ?, ?, ?, ?)", row)
            }
            let sql = "SELECT k, i, f, s, b FROM \(table) ORDER BY k"
            let expectedTypes: [SQLColumnType] = [.integer, .integer, .double, .text, .blob]
            let queried = try await pool.query(sql)
            #expect(queried.columns.types == expectedTypes)
            #expect(queried.rows.map(\.values) == rows)
            let stream = try await pool.stream(sql, [], batchRows: 2)
            #expect(stream.columns.types == expectedTypes)
            var streamed: [[SQLValue]] = []
            while let batch = try await stream.next() {
                #expect(batch.count <= 2)
                streamed += batch.map(\.values)
            }
            #expect(streamed == rows)
            try await pool.execute("DROP TABLE \(table)")
        }
    }
}
