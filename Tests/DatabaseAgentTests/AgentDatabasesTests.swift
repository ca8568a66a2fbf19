@testable import DatabaseAgent
import Foundation
import Logging
import Reactor
import Storage
import Testing
import TestSupport

/// An agent in front of one of the test databases (SQLite file, and MariaDB/PostgreSQL when their traits are built),
/// reached through the agent:// driver: what a service sees.
final class AgentInFront: Sendable {
    let group: EventLoopGroup
    let pool: ConnectionPool
    let agent: DatabaseAgentServer
    let port: Int

    init(_ db: TestDatabase) async throws {
        group = try EventLoopGroup(ioLoops: 1, configuration: LoopConfiguration(poller: .epoll), placement: .roundRobin)
        pool = try ConnectionPool(url: db.url(), configuration: PoolConfiguration(
            minConnections: 0, maxConnections: 4, connectTimeout: .seconds(3), reconnectBackoff: .milliseconds(50),
            maxReconnectBackoff: .milliseconds(400), maintenanceInterval: .milliseconds(100)),
            logger: AgentDriverTests.logger)
        agent = DatabaseAgentServer(group: group, configuration: DatabaseAgentConfiguration(port0: ()),
                                    rules: try AccessFile.parse("token admin sql name=admin"), pool: pool,
                                    logger: AgentDriverTests.logger)
        let agent = agent
        port = Int(try await runOnDedicatedThread(name: "test-agent-start") { Result { try agent.start() } }.get().port)
    }

    func clientPool(maxConnections: Int = 2) throws -> ConnectionPool {
        try ConnectionPool(url: "agent://127.0.0.1:\(port)?token=admin", configuration: PoolConfiguration(
            minConnections: 0, maxConnections: maxConnections, reconnectBackoff: .milliseconds(50),
            maxReconnectBackoff: .milliseconds(400)), logger: AgentDriverTests.logger)
    }

    func stop() async {
        let agent = agent
        await runOnDedicatedThread(name: "test-agent-stop") { agent.shutdown() }
        await pool.close()
        await group.shutdown()
    }
}

/// Every driver behind the agent. Serialized: one test stops and starts the database servers (scripts/test runs it
/// on its own, after the rest, as StorageTests' poolRecoversWhenTheServerRestarts).
@Suite("Every database behind the agent: types, a cancelled 10 s sleep, the database restarting", .serialized,
       .timeLimit(.minutes(3)))
struct AgentDatabasesTests {
    static func table(_ prefix: String) -> String { "\(prefix)_\(UInt32.random(in: 0...UInt32.max))" }

    @Test("types round trip through the agent: int64 edges, doubles, Unicode, NULL, a 1 MiB blob",
          arguments: TestDatabase.fileAndServers)
    func typesRoundTrip(db: TestDatabase) async throws {
        let front = try await AgentInFront(db)
        let pool = try front.clientPool()
        let d = pool.dialect
        let expected: SQLDialect = db == .mysql ? .mysql : db == .postgres ? .postgres : .sqlite
        #expect(d == expected, "the agent told its dialect")
        let table = Self.table("agent_types")
        try await pool.execute("""
            CREATE TABLE \(table) (id \(d.autoIncrementPrimaryKey), i \(d.bigintType), f \(d.doubleType),
            s \(d.textType), b \(d.blobType), n \(d.textType))\(d.tableOptions)
            """)
        let blob = (0..<(1 << 20)).map { UInt8(truncatingIfNeeded: $0 &* 31 &+ 7) }
        let rows: [[SQLValue]] = [
            [.integer(.min), .double(-0.5), .text("héllo wörld 世界 🚀"), .blob([]), .null],
            [.integer(.max), .double(1.0e300), .text(""), .blob([0, 255, 0]), .text("x")],
            [.integer(0), .double(2.5e-300), .text("tab\tnew\nline 'quote' \"dq\""), .blob(blob), .null],
        ]
        for row in rows {
            try await pool.execute("INSERT INTO \(table) (i, f, s, b, n) VALUES (?, ?, ?, ?, ?)", row)
        }
        let back = try await pool.query("SELECT i, f, s, b, n FROM \(table) ORDER BY id", [])
        #expect(back.columns.types.prefix(4) == [.integer, .double, .text, .blob])
        #expect(back.rows.count == rows.count)
        for (got, sent) in zip(back.rows, rows) { #expect(got.values == sent) }
        try await pool.execute("DROP TABLE \(table)")
        await pool.close()
        await front.stop()
    }

    @Test("a 10 s statement with a 200 ms timeout is answered within a second; the next statement works",
          arguments: TestDatabase.fileAndServers)
    func sleepIsCancelled(db: TestDatabase) async throws {
        let front = try await AgentInFront(db)
        let pool = try front.clientPool(maxConnections: 1)
        let sleep: String
        switch pool.dialect {
        case .mysql: sleep = "SELECT SLEEP(10)"
        case .postgres: sleep = "SELECT pg_sleep(10)"
        case .sqlite:
            sleep = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 1000000000) "
                + "SELECT COUNT(*) FROM c"
        }
        let started = ContinuousClock.now
        do {
            _ = try await pool.query(sleep, [], timeout: .milliseconds(200))
            Issue.record("the sleep finished")
        } catch let error as StorageError {
            #expect(error.isStatementTimeout, "\(error)")
        }
        let took = ContinuousClock.now - started
        #expect(took < .seconds(1) * testTimeScale, "answered after \(took)")
        #expect(try await pool.query("SELECT 1", []).rows.first?[0] == .integer(1))
        // The agent cancelled it in the database too: its pooled connection is free again well before 10 s.
        #expect(await eventually(timeout: .seconds(5)) { front.pool.statistics.inUse == 0 })
        #expect(front.pool.statistics.statementTimeouts >= 1)
        await pool.close()
        await front.stop()
    }

    #if MySQL || PostgreSQL
    @Test("the database restarting mid-run: callers get errors, none hangs; then the agent serves again",
          arguments: TestDatabase.servers)
    func agentRecoversWhenTheServerRestarts(db: TestDatabase) async throws {
        let front = try await AgentInFront(db)
        let pool = try front.clientPool()
        let d = pool.dialect
        let table = Self.table("agent_restart")
        try await pool.execute("CREATE TABLE \(table) (k \(d.varchar(16)) PRIMARY KEY, v \(d.bigintType))\(d.tableOptions)")
        try await pool.execute("INSERT INTO \(table) (k, v) VALUES (?, ?)", ["before", 1])
        try await runDatabaseScript("stop-\(db.serverName)")
        do {
            for _ in 0..<3 {
                let started = ContinuousClock.now
                do {
                    _ = try await pool.query("SELECT v FROM \(table) WHERE k = ?", ["before"])
                    Issue.record("a query succeeded while the database was down")
                } catch let error as StorageError {
                    #expect(!error.message.isEmpty, "\(error)")
                }
                #expect(ContinuousClock.now - started < .seconds(10))
            }
        } catch {
            try? await runDatabaseScript("start-\(db.serverName)")
            throw error
        }
        try await runDatabaseScript("start-\(db.serverName)")
        let recovered = await eventually(timeout: .seconds(20)) {
            (try? await pool.queryFirst("SELECT v FROM \(table) WHERE k = ?", ["before"])?.decode(0, as: Int.self)) == 1
        }
        #expect(recovered)
        try await pool.execute("DROP TABLE \(table)")
        await pool.close()
        await front.stop()
    }
    #endif
}

/// Runs `scripts/db COMMAND` (SWITCHYARD_TEST_DB_SCRIPT, else this checkout's), as StorageTests do.
func runDatabaseScript(_ command: String) async throws {
    let script = ProcessInfo.processInfo.environment["SWITCHYARD_TEST_DB_SCRIPT"]
        ?? URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .deletingLastPathComponent().appendingPathComponent("scripts/db").path
    let process = Process()
    process.executableURL = URL(fileURLWithPath: "/bin/bash")
    process.arguments = [script, command]
    let status = try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<Int32, Error>) in
        process.terminationHandler = { continuation.resume(returning: $0.terminationStatus) }
        do { try process.run() } catch { continuation.resume(throwing: error) }
    }
    guard status == 0 else { throw TestFailure("scripts/db \(command) failed with status \(status)") }
}
