@testable import DatabaseAgent
import Foundation
import Logging
import Reactor
import Storage
import Testing
import TestSupport

/// Storage's `agent://` driver against a real agent over sockets: what a service sees through ConnectionPool.
@Suite("The agent:// Storage driver: types, streams, tokens, transactions, the agent gone and back",
       .timeLimit(.minutes(2)))
struct AgentDriverTests {
    static let logger: Logger = {
        var logger = Logger(label: "agent-driver-tests")
        logger.logLevel = .warning
        return logger
    }()

    static func pool(_ running: RunningAgent, token: String = "admin", options: String = "",
                     configuration: PoolConfiguration = PoolConfiguration(minConnections: 0, maxConnections: 4))
        throws -> ConnectionPool
    {
        try ConnectionPool(url: "agent://127.0.0.1:\(running.port)?token=\(token)\(options)",
                           configuration: configuration, logger: logger)
    }

    @Test("types round trip through the pool: int64 edges, doubles, Unicode, NULL, 1 MiB blob; the dialect learned",
          arguments: PollerKind.allCases)
    func typesRoundTrip(poller: PollerKind) async throws {
        let running = try await RunningAgent(poller: poller, bigRows: 0)
        let pool = try Self.pool(running)
        #expect(pool.dialect == .sqlite, "learned from the agent's Welcome")
        let blob = (0..<(1 << 20)).map { UInt8(truncatingIfNeeded: $0 &* 31 &+ 7) }
        let rows: [[SQLValue]] = [
            [.integer(.min), .double(-0.5), .text("héllo wörld 世界 🚀"), .blob([]), .null],
            [.integer(.max), .double(.greatestFiniteMagnitude), .text(""), .blob([0, 255, 0]), .text("x")],
            [.integer(0), .double(.leastNonzeroMagnitude), .text("tab\tnew\nline\u{0}nul"), .blob(blob), .null],
        ]
        for row in rows {
            let result = try await pool.query("INSERT INTO t (i, d, s, b, n) VALUES (?, ?, ?, ?, ?)", row)
            #expect(result.affectedRows == 1 && result.lastInsertID != nil)
        }
        let injection = "x'); DROP TABLE t; --"
        try await pool.execute("INSERT INTO t (s) VALUES (?)", [.text(injection)])
        let back = try await pool.query("SELECT i, d, s, b, n FROM t ORDER BY id", [])
        #expect(back.columns.names == ["i", "d", "s", "b", "n"])
        #expect(back.columns.types.first == .integer)
        #expect(back.rows.count == rows.count + 1)
        for (got, sent) in zip(back.rows, rows) { #expect(got.values == sent) }
        #expect(back.rows.last?["s"] == .text(injection))
        await #expect(throws: StorageError.self) { try await pool.query("SELECT * FROM no_such_table", []) }
        do {
            _ = try await pool.query("INSERT INTO t (id) VALUES (1)", [])
            Issue.record("a duplicate key went through")
        } catch let error as StorageError {
            guard case .constraintViolation(let detail) = error else {
                Issue.record("expected constraintViolation, got \(error)")
                return
            }
            #expect(detail.driver == "sqlite" && detail.code != nil, "the database's own code comes through")
        }
        await pool.close()
        await running.stop()
    }

    @Test("a 100,000-row stream: every row, in order, while the agent reads only a few chunks ahead of the caller")
    func boundedStream() async throws {
        let running = try await RunningAgent(poller: .epoll, bigRows: 100_000)
        let pool = try Self.pool(running, options: "&batch_rows=1000&timeout_ms=120000")
        let stream = try await pool.stream("SELECT k FROM big ORDER BY k", [], batchRows: 100)
        let first = try await stream.next()
        #expect(first?.count == 100)
        // The caller holds still: the agent may read its first batches (credit kept, one stream batch of 500), no
        // more.
        try await Task.sleep(for: .milliseconds(200))
        let readAhead = running.agent.statistics.rowsRead
        #expect(readAhead <= 3_000, "rows read while the caller holds still: \(readAhead)")
        var count = first?.count ?? 0
        var expected: Int64 = Int64(count)
        var inOrder = true
        while let rows = try await stream.next() {
            for row in rows {
                if row[0] != .integer(expected) { inOrder = false }
                expected += 1
            }
            count += rows.count
        }
        #expect(count == 100_000 && inOrder)
        #expect(try await pool.query("SELECT COUNT(*) FROM big", []).rows.first?[0] == .integer(100_000),
                "the connection serves the next statement")
        // Closing a stream early frees the agent's request and the connection.
        let early = try await pool.stream("SELECT k FROM big ORDER BY k", [], batchRows: 10)
        _ = try await early.next()
        await early.cancel()
        #expect(try await pool.query("SELECT 1", []).rows.count == 1)
        #expect(await eventually { running.agent.statistics.inFlight == 0 })
        await pool.close()
        await running.stop()
    }

    @Test("a refused token is authenticationFailed with the agent's reason; a token without `sql` too")
    func refusedToken() async throws {
        let running = try await RunningAgent(poller: .epoll, bigRows: 0)
        do {
            _ = try Self.pool(running, token: "wrong")
            Issue.record("a pool was made with a wrong token")
        } catch let error as StorageError {
            guard case .authenticationFailed(let detail) = error else {
                Issue.record("expected authenticationFailed, got \(error)")
                return
            }
            #expect(detail.message.contains("unknown token"))
        }
        let pool = try Self.pool(running, token: "wrong", options: "&dialect=sqlite")
        do {
            _ = try await pool.query("SELECT 1", [])
            Issue.record("a query went through with a wrong token")
        } catch let error as StorageError {
            guard case .authenticationFailed = error else {
                Issue.record("got \(error)")
                return
            }
        }
        let named = try Self.pool(running, token: "app", options: "&dialect=sqlite")
        do {
            _ = try await named.query("SELECT 1", [])
            Issue.record("a token without sql sent SQL text")
        } catch let error as StorageError {
            guard case .authenticationFailed(let detail) = error else {
                Issue.record("got \(error)")
                return
            }
            #expect(detail.message.contains("sql"))
        }
        await pool.close()
        await named.close()
        await running.stop()
    }

    @Test("transactions pin one agent connection: own writes seen, others' not; a failure half way leaves nothing",
          arguments: PollerKind.allCases)
    func transactions(poller: PollerKind) async throws {
        let running = try await RunningAgent(poller: poller, bigRows: 0)
        let pool = try Self.pool(running)
        let inside = try await pool.transaction { conn -> Int64? in
            try await conn.execute("INSERT INTO t (id, s) VALUES (1, 'a')")
            let outside = try await pool.query("SELECT COUNT(*) FROM t", []).rows.first?[0]
            #expect(outside == .integer(0), "another connection does not see the uncommitted row")
            return try await conn.queryFirst("SELECT COUNT(*) FROM t")?.decode(0, as: Int64.self)
        }
        #expect(inside == 1, "the transaction sees its own row")
        #expect(try await pool.query("SELECT COUNT(*) FROM t", []).rows.first?[0] == .integer(1), "committed")
        await #expect(throws: StorageError.self) {
            try await pool.transaction { conn in
                try await conn.execute("INSERT INTO t (id, s) VALUES (2, 'b')")
                try await conn.execute("INSERT INTO t (id, s) VALUES (3, 'c')")
                try await conn.execute("INSERT INTO t (id, s) VALUES (1, 'dup')")  // fails half way
            }
        }
        #expect(try await pool.query("SELECT COUNT(*) FROM t", []).rows.first?[0] == .integer(1), "nothing left")
        #expect(running.agent.statistics.transactionsOpen == 0)
        await pool.close()
        await running.stop()
    }

    @Test("a caller gone inside a transaction: the agent rolls it back and frees the pooled connection")
    func disconnectRollsBack() async throws {
        let running = try await RunningAgent(poller: .epoll, bigRows: 0)
        let connection = try await SQLConnection.connect(
            to: "agent://127.0.0.1:\(running.port)?token=admin", logger: Self.logger)
        _ = try await connection.query("BEGIN", [])
        _ = try await connection.query("INSERT INTO t (id, s) VALUES (7, 'gone')", [])
        #expect(running.agent.statistics.transactionsOpen == 1)
        await connection.close()
        #expect(await eventually { running.agent.statistics.transactionsOpen == 0 })
        #expect(running.agent.statistics.transactionsRolledBack == 1)
        let count = try await running.pool.query("SELECT COUNT(*) FROM t", []).rows.first?[0]
        #expect(count == .integer(0))
        await running.stop()
    }

    @Test("a transaction open past the agent's transaction timeout is rolled back; its COMMIT fails")
    func transactionTimeout() async throws {
        var configuration = DatabaseAgentConfiguration(port0: ())
        configuration.transactionTimeout = .milliseconds(300)
        let running = try await RunningAgent(poller: .epoll, bigRows: 0, configuration: configuration)
        let pool = try Self.pool(running)
        await #expect(throws: StorageError.self) {
            try await pool.transaction { conn in
                try await conn.execute("INSERT INTO t (id, s) VALUES (9, 'late')")
                #expect(await eventually { running.agent.statistics.transactionsRolledBack == 1 })
            }
        }
        #expect(try await pool.query("SELECT COUNT(*) FROM t", []).rows.first?[0] == .integer(0))
        #expect(await eventually { running.agent.statistics.transactionsOpen == 0 })
        await pool.close()
        await running.stop()
    }

    @Test("a statement timeout is answered at once (Cancel) and the connection serves the next statement")
    func statementTimeout() async throws {
        let running = try await RunningAgent(poller: .epoll, bigRows: 1000)
        let pool = try Self.pool(running, configuration: PoolConfiguration(minConnections: 0, maxConnections: 1))
        let started = ContinuousClock.now
        do {
            _ = try await pool.query("SELECT COUNT(*) FROM big a, big b, big c", [], timeout: .milliseconds(200))
            Issue.record("the slow statement finished")
        } catch let error as StorageError {
            #expect(error.isStatementTimeout, "\(error)")
        }
        #expect(ContinuousClock.now - started < .seconds(5))
        #expect(try await pool.query("SELECT 1", []).rows.first?[0] == .integer(1))
        #expect(pool.statistics.created == 1, "the same connection")
        await pool.close()
        await running.stop()
    }

    @Test("the agent gone mid-statement: a clear connectionLost; the pool recovers once it is back on its port")
    func agentGoneAndBack() async throws {
        let running = try await RunningAgent(poller: .epoll, bigRows: 1000)
        let pool = try Self.pool(running, options: "&timeout_ms=30000", configuration: PoolConfiguration(
            minConnections: 0, maxConnections: 2, reconnectBackoff: .milliseconds(50),
            maxReconnectBackoff: .milliseconds(200)))
        #expect(try await pool.query("SELECT COUNT(*) FROM big", []).rows.first?[0] == .integer(1000))
        let slow = Task { try await pool.query("SELECT COUNT(*) FROM big a, big b, big c", []) }
        #expect(await eventually { running.agent.statistics.inFlight == 1 })
        let agent = running.agent
        await runOnDedicatedThread(name: "test-agent-stop") { agent.shutdown() }
        do {
            _ = try await slow.value
            Issue.record("the statement finished without its agent")
        } catch let error as StorageError {
            guard case .connectionLost(let detail) = error else {
                Issue.record("got \(error)")
                return
            }
            #expect(detail.message.contains("agent"))
        }
        await #expect(throws: StorageError.self) { try await pool.query("SELECT 1", []) }
        var configuration = DatabaseAgentConfiguration(port0: ())
        configuration.server.port = running.port
        let again = DatabaseAgentServer(group: running.group, configuration: configuration,
                                        rules: try AccessFile.parse(RunningAgent.access), pool: running.pool,
                                        logger: Self.logger)
        _ = try await runOnDedicatedThread(name: "test-agent-restart") { Result { try again.start() } }.get()
        let recovered = await eventually(timeout: .seconds(20)) {
            (try? await pool.query("SELECT 1", []).rows.count) == 1
        }
        #expect(recovered)
        await pool.close()
        await runOnDedicatedThread(name: "test-agent-stop") { again.shutdown() }
        await running.stop()
    }
}
