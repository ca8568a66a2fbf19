import Foundation
@testable import Storage
import Synchronization
import Testing
import TestSupport

/// Statements that run long on each database: cancelled by a timeout long before they end.
func slowStatement(_ dialect: SQLDialect) -> String {
    switch dialect {
    case .sqlite:
        return "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x+1 FROM c WHERE x < 1000000000) SELECT count(*) FROM c"
    case .mysql: return "SELECT SLEEP(10)"
    case .postgres: return "SELECT pg_sleep(10)"
    }
}

/// A statement that takes a few milliseconds and returns its parameter as `v`.
func shortStatement(_ dialect: SQLDialect, milliseconds: Int) -> String {
    switch dialect {
    case .sqlite:
        // About 1 ms per 1,000 steps on this machine; the exact time does not matter.
        return "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x+1 FROM c WHERE x < \(milliseconds * 1_000)) "
            + "SELECT ? AS v, count(*) AS n FROM c"
    case .mysql: return "SELECT ? AS v, SLEEP(\(Double(milliseconds) / 1000)) AS n"
    case .postgres: return "SELECT CAST(? AS BIGINT) AS v, pg_sleep(\(Double(milliseconds) / 1000)) AS n"
    }
}

/// Statement timeouts that cancel on the server (part of the serialized ``DriverTests``: the servers are shared).
extension DriverTests {
    @Test(arguments: TestDatabase.all)
    func timeoutCancelsTheStatementAndTheConnectionStaysUsable(db: TestDatabase) async throws {
        try await withPool(db) { pool in
            try await pool.withConnection { connection in
                let started = ContinuousClock.now
                let error = await expectStorageError("timeout") {
                    _ = try await connection.query(slowStatement(pool.dialect), [], timeout: .milliseconds(200))
                }
                let elapsed = ContinuousClock.now - started
                // The statement runs 10 s (SQLite: far longer); a cancelled one ends within a few. The bound is
                // loose: beside the whole suite, the tasks that await it may wait seconds for a thread.
                #expect(elapsed < .seconds(5) * testTimeScale, "the timeout took \(elapsed)")
                #expect(elapsed >= .milliseconds(200))
                #expect(error?.message.contains("200 ms") == true, "\(String(describing: error))")
                #expect(!connection.isBroken)
                // Once, or again a second later if the first reached the server before the statement did.
                #expect(connection.statementGuard.cancelsSent >= 1)
                // The same connection answers at once: the server is not still running the statement.
                let row = try await connection.queryFirst("SELECT 1 AS one")
                #expect(try row?.decode("one", as: Int64.self) == 1)
                #expect(ContinuousClock.now - started < .seconds(7) * testTimeScale)
            }
        }
    }

    @Test(arguments: TestDatabase.all)
    func timeoutThroughThePoolLeavesItsConnectionHealthy(db: TestDatabase) async throws {
        try await withPool(db, PoolConfiguration(minConnections: 0, maxConnections: 1)) { pool in
            _ = try await pool.query("SELECT 1")
            let before = pool.statistics
            await expectStorageError("timeout") {
                _ = try await pool.query(slowStatement(pool.dialect), [], timeout: .milliseconds(200))
            }
            // The callback variant, delivered on the caller's executor.
            let executor = QueueExecutor()
            let result = await withCheckedContinuation { continuation in
                pool.query(slowStatement(pool.dialect), [], timeout: .milliseconds(200), on: executor) { result in
                    #expect(executor.isCurrent)
                    continuation.resume(returning: result)
                }
            }
            #expect(throws: StorageError.self) { try result.get() }
            if case .failure(let error) = result { #expect(error.kind == "timeout", "\(error)") }
            let row = try await pool.queryFirst("SELECT 2 AS two")
            #expect(try row?.decode("two", as: Int64.self) == 2)
            let after = pool.statistics
            #expect(after.created == before.created, "\(before) -> \(after)")
            #expect(after.closed == before.closed && after.failed == 0, "\(after)")
            #expect(after.open == before.open && after.inUse == 0, "\(after)")
            #expect(after.statementTimeouts == 2 && after.timeouts == 0, "\(after)")
        }
    }

    @Test(arguments: TestDatabase.all)
    func statementsThatEndInTimeAreNeverCancelled(db: TestDatabase) async throws {
        try await withPool(db) { pool in
            try await pool.withConnection { connection in
                let sql = shortStatement(pool.dialect, milliseconds: 5)
                // Statements of ~5 ms, each with a 1 s timeout (a loaded machine may stall one for a while), for
                // 2.5 timeouts at least: a timer that were not disarmed at the end of its statement would hit a
                // later one.
                let timeout = .seconds(1) * testTimeScale
                let started = ContinuousClock.now
                var i: Int64 = 0
                while i < 50 || ContinuousClock.now - started < timeout * 2.5 {
                    let result = try await connection.query(sql, [.integer(i)], timeout: timeout)
                    #expect(try result.rows.first?.decode("v", as: Int64.self) == i)
                    i += 1
                }
                #expect(connection.statementGuard.cancelsSent == 0)
            }
        }
    }

    @Test(arguments: TestDatabase.all)
    func aLateCancelDoesNotHitTheNextStatement(db: TestDatabase) async throws {
        try await withPool(db) { pool in
            try await pool.withConnection { connection in
                // 2 s each: long enough to be seen running by a test task that a loaded machine schedules late.
                let sql = shortStatement(pool.dialect, milliseconds: 2000)
                let statementGuard = connection.statementGuard
                // Statement A runs; note its generation.
                let first = Task { try await connection.query(sql, [1], timeout: .seconds(30)) }
                var generationA: UInt64?
                #expect(await eventually {
                    generationA = statementGuard.runningGeneration
                    return generationA != nil
                })
                _ = try await first.value
                // Statement B runs; A's cancel comes now (as a timer that fired late would): it must be dropped.
                let second = Task { try await connection.query(sql, [2], timeout: .seconds(30)) }
                #expect(await eventually { statementGuard.runningGeneration.map { $0 != generationA } ?? false })
                #expect(!statementGuard.cancel(try #require(generationA), reason: .timeout(.milliseconds(1))))
                let result = try await second.value
                #expect(try result.rows.first?.decode("v", as: Int64.self) == 2)
                #expect(statementGuard.cancelsSent == 0)
                // Once B ended, even its own generation is no longer cancellable.
                let generationB = try #require(generationA) + 1
                #expect(!statementGuard.cancel(generationB, reason: .caller))
            }
        }
    }
}
