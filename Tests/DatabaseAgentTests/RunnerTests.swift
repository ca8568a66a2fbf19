@testable import DatabaseAgent
import Logging
import Storage
import Testing
import TestSupport

@Suite("The pool runner: selects stream from the database, timeouts cancel on it")
struct RunnerTests {
    @Test("statements that return rows are streamed; changes run as one query")
    func classification() {
        for sql in ["SELECT 1", "  select * from t", "(SELECT 1) UNION (SELECT 2)", "-- note\nSELECT 1",
                    "/* c */ WITH c AS (SELECT 1) SELECT * FROM c", "VALUES (1)", "PRAGMA table_info(t)", "SHOW TABLES",
                    "EXPLAIN SELECT 1", "\t\r\nSeLeCt 1", "/* a */ /* b */ (((select 1)))", "desc t", "TABLE t",
                    "WITH c AS (SELECT 1 AS abcdefghijinsert) SELECT * FROM c",
                    "WITH c AS (SELECT 'ünïcödé' AS x, 1 AS insertionsort) SELECT * FROM c", "select\n1"] {
            #expect(PoolStatementRunner.returnsRows(sql), "\(sql)")
        }
        for sql in ["INSERT INTO t VALUES (1)", "update t set i = 1", "DELETE FROM t", "CREATE TABLE x (a INT)",
                    "WITH c(x) AS (SELECT 1) INSERT INTO t (i) SELECT x FROM c", "BEGIN", "", "-- only a comment",
                    "/* never closed SELECT 1", "SELECTION", "ÉSELECT 1", "with c as (select 1) delete from t",
                    "WITH c AS (SELECT 1)\n\tUPDATE t SET i = 1", "   ", "(("] {
            #expect(!PoolStatementRunner.returnsRows(sql), "\(sql)")
        }
    }

    private func pool(_ name: String) async throws -> ConnectionPool {
        let pool = try ConnectionPool(url: temporarySQLiteURL(name),
                                      configuration: PoolConfiguration(maxConnections: 2),
                                      logger: Logger(label: "runner-tests"))
        try await pool.execute("CREATE TABLE big (k INTEGER PRIMARY KEY)", [])
        try await pool.execute("""
            WITH RECURSIVE c(x) AS (SELECT 0 UNION ALL SELECT x + 1 FROM c WHERE x + 1 < 100000)
            INSERT INTO big (k) SELECT x FROM c
            """, [])
        return pool
    }

    @Test("a large select is read a batch at a time on a stream that holds its connection until cancelled")
    func selectStreams() async throws {
        let pool = try await pool("runner-stream")
        let runner = PoolStatementRunner(pool: pool)
        let source = try await runner.run("SELECT k FROM big ORDER BY k", [], timeout: .seconds(30))
        #expect(source.columns.map(\.name) == ["k"] && source.columns.first?.type == .integer)
        #expect(source is StreamSource)
        let first = try await source.nextBatch(maxRows: 10)
        #expect(first.rows == (0..<10).map { [.integer(Int64($0))] } && !first.isLast)
        let second = try await source.nextBatch(maxRows: 700)  // more than one stream batch of 500
        #expect(second.rows.count == 700 && second.rows.first == [.integer(10)] && second.rows.last == [.integer(709)])
        #expect(pool.statistics.openStreams == 1)
        source.cancel()
        #expect(await eventually { pool.statistics.openStreams == 0 })
        #expect(try await pool.queryFirst("SELECT count(*) AS n FROM big")?.decode("n", as: Int64.self) == 100_000)
        await pool.close()
    }

    @Test("a stream read to its end says so on its last batch; a change reports its affected rows")
    func endAndChanges() async throws {
        let pool = try await pool("runner-end")
        let runner = PoolStatementRunner(pool: pool)
        let source = try await runner.run("SELECT k FROM big WHERE k < ?", [.integer(1200)], timeout: .seconds(30))
        var rows = 0
        var last = false
        while !last {
            let batch = try await source.nextBatch(maxRows: 256)
            rows += batch.rows.count
            last = batch.isLast
        }
        #expect(rows == 1200)
        #expect(await eventually { pool.statistics.openStreams == 0 })
        let change = try await runner.run("DELETE FROM big WHERE k >= ?", [.integer(99_990)], timeout: .seconds(30))
        let done = try await change.nextBatch(maxRows: 10)
        #expect(done.isLast && done.affectedRows == 10)
        await pool.close()
    }

    @Test("a statement past its timeout is cancelled in the database: a timeout, and the pool serves the next one")
    func timeoutCancels() async throws {
        let pool = try await pool("runner-timeout")
        let runner = PoolStatementRunner(pool: pool)
        let slow = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT count(*) FROM c"
        let clock = ContinuousClock()
        let start = clock.now
        await #expect(throws: RunnerError.timeout(.milliseconds(200))) {
            let source = try await runner.run(slow, [], timeout: .milliseconds(200))
            _ = try await source.nextBatch(maxRows: 10)
        }
        // The statement never ends by itself; a loose bound (beside the whole suite, the awaiting task may wait
        // seconds for a thread).
        #expect(clock.now - start < .seconds(30))
        #expect(await eventually { pool.statistics.openStreams == 0 })
        #expect(pool.statistics.statementTimeouts >= 1)
        #expect(try await pool.queryFirst("SELECT 7 AS n")?.decode("n", as: Int64.self) == 7)
        await pool.close()
    }
}
