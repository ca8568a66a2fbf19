#if PostgreSQL
@testable import DatabaseAgent
import Foundation
import Logging
import Messaging
import Reactor
import Storage
import SwiftProtobuf
import Synchronization
import Testing
import TestSupport

/// A pool on the test PostgreSQL and a loop group whose loop drives its statements
/// (``ConnectionPool/stream(_:_:firstBatch:batchRows:timeout:drivenBy:completion:)``: non-blocking libpq on the loop's
/// thread, as the database agent runs its selects).
final class LoopDrivenFixture: Sendable {
    let group: EventLoopGroup
    let loop: ReactorStorageLoop
    let pool: ConnectionPool

    init(poller: PollerKind, maxConnections: Int = 2) throws {
        group = try EventLoopGroup(ioLoops: 1, configuration: LoopConfiguration(poller: poller), placement: .roundRobin)
        loop = ReactorStorageLoop(group.next())
        pool = try ConnectionPool(url: TestDatabase.postgres.url(), configuration: PoolConfiguration(
            minConnections: 0, maxConnections: maxConnections, connectTimeout: .seconds(3),
            reconnectBackoff: .milliseconds(50), maxReconnectBackoff: .milliseconds(400)),
            logger: AgentDriverTests.logger)
    }

    /// What a statement's completion saw.
    struct Outcome: Sendable {
        var result: Result<LoopStatementStart, StorageError>
        var onLoopThread: Bool
        var inUseAtCompletion: Int
    }

    /// Runs one statement driven by the loop and waits for its completion.
    func run(_ sql: String, _ parameters: [SQLValue] = [], firstBatch: Int = 100, batchRows: Int = 1000,
             timeout: Duration? = nil) async -> Outcome {
        let (pool, loop) = (self.pool, self.loop)
        return await withCheckedContinuation { continuation in
            pool.stream(sql, parameters, firstBatch: firstBatch, batchRows: batchRows, timeout: timeout,
                        drivenBy: loop) { result in
                continuation.resume(returning: Outcome(result: result, onLoopThread: loop.inLoopThread,
                                                       inUseAtCompletion: pool.statistics.inUse))
            }
        }
    }

    func stop() async {
        await pool.close()
        await group.shutdown()
    }
}

/// Backends of the test database running `pg_sleep` from another session than the one asking.
private func sleepingBackends(_ pool: ConnectionPool, marker: String) async throws -> Int {
    let result = try await pool.query("""
        SELECT COUNT(*) FROM pg_stat_activity
        WHERE state = 'active' AND pid <> pg_backend_pid() AND query LIKE '%' || CAST(? AS TEXT) || '%'
        """, [.text(marker)])
    return try result.rows.first?.decode(0, as: Int.self) ?? -1
}

@Suite("PostgreSQL statements driven by a loop: rows, the rest streamed, cancels on the server, the server restarting",
       .serialized, .timeLimit(.minutes(3)))
struct LoopDrivenPostgresTests {
    @Test("a select's rows come back on the loop, its connection in the pool already; 64 at once on 2 connections",
          arguments: PollerKind.allCases)
    func selectsOnTheLoop(poller: PollerKind) async throws {
        let fixture = try LoopDrivenFixture(poller: poller)
        #expect(fixture.pool.drivesStatementsOnLoop)
        let outcome = await fixture.run("SELECT n, 'x' || CAST(? AS TEXT) AS s FROM generate_series(1, 5) AS n",
                                        [.text("é")])
        let start = try outcome.result.get()
        #expect(outcome.onLoopThread)
        #expect(outcome.inUseAtCompletion == 0, "released before the answer")
        #expect(start.rest == nil)
        #expect(start.columns.names == ["n", "s"] && start.columns.types == [.integer, .text])
        #expect(start.rows.map(\.values) == (1...5).map { [.integer(Int64($0)), .text("xé")] })
        // Many callers at once: the pool's bound holds (waiters served as connections come back on the loop).
        let values = await withTaskGroup(of: Int64?.self) { group in
            for k in 0..<64 {
                group.addTask {
                    let outcome = await fixture.run("SELECT CAST(? AS BIGINT) * 2 AS twice", [.integer(Int64(k))])
                    return try? outcome.result.get().rows.first?.decode(0, as: Int64.self)
                }
            }
            var values: [Int64?] = []
            for await value in group { values.append(value) }
            return values
        }
        #expect(values.compactMap { $0 }.sorted() == (0..<64).map { Int64($0) * 2 })
        let stats = fixture.pool.statistics
        #expect(stats.highWater <= 2 && stats.inUse == 0 && stats.waiting == 0, "\(stats)")
        // A statement the server refuses: its error, the connection kept.
        let refused = await fixture.run("SELECT * FROM no_such_table_\(UInt32.random(in: 0...UInt32.max))")
        guard case .failure(.syntax) = refused.result else {
            Issue.record("expected a syntax error: \(refused.result)")
            return
        }
        #expect(fixture.pool.statistics.closed == 0)
        await fixture.stop()
    }

    @Test("more rows than the first batch: the rest streams in batches on the worker, then the connection is back",
          arguments: PollerKind.allCases)
    func restAsAStream(poller: PollerKind) async throws {
        let fixture = try LoopDrivenFixture(poller: poller)
        let outcome = await fixture.run("SELECT n FROM generate_series(1, 2500) AS n", firstBatch: 100,
                                        batchRows: 1000)
        let start = try outcome.result.get()
        #expect(start.rows.count == 100 && start.rows.first?[0] == .integer(1))
        let rest = try #require(start.rest)
        #expect(fixture.pool.statistics.openStreams == 1 && fixture.pool.statistics.inUse == 1)
        var sizes: [Int] = []
        var last: SQLValue?
        while let batch = try await rest.next() {
            sizes.append(batch.count)
            last = batch.last?[0]
        }
        #expect(sizes == [1000, 1000, 400])
        #expect(last == .integer(2500))
        #expect(await eventually { fixture.pool.statistics.inUse == 0 && fixture.pool.statistics.openStreams == 0 })
        // The connection is healthy: the next statement runs on it.
        #expect(try await fixture.run("SELECT 1").result.get().rows.first?[0] == .integer(1))
        #expect(fixture.pool.statistics.created == 1)
        await fixture.stop()
    }

    @Test("a caller that never reads the rest: one batch read and held, no more; its cancel frees the connection",
          arguments: PollerKind.allCases)
    func callerThatNeverReads(poller: PollerKind) async throws {
        let fixture = try LoopDrivenFixture(poller: poller, maxConnections: 1)
        let outcome = await fixture.run("SELECT n, repeat('x', 100) FROM generate_series(1, 200000) AS n",
                                        firstBatch: 50, batchRows: 500)
        let rest = try #require(try outcome.result.get().rest)
        let held = rest.rowsFetched
        #expect(held == 50, "the loop read exactly the first batch")
        try await Task.sleep(for: .milliseconds(300))
        #expect(rest.rowsFetched == held, "nothing is read while the caller does not ask")
        await rest.cancel()
        #expect(await eventually { fixture.pool.statistics.inUse == 0 })
        #expect(try await fixture.run("SELECT 2").result.get().rows.first?[0] == .integer(2))
        #expect(fixture.pool.statistics.created == 1, "cancelled, not broken")
        await fixture.stop()
    }

    @Test("a timeout cancels the statement on the server within a second; the same connection runs the next one",
          arguments: PollerKind.allCases)
    func timeoutCancelsOnTheServer(poller: PollerKind) async throws {
        let fixture = try LoopDrivenFixture(poller: poller, maxConnections: 1)
        let observer = try ConnectionPool(url: TestDatabase.postgres.url(), logger: AgentDriverTests.logger)
        let marker = "loop_timeout_\(UInt32.random(in: 0...UInt32.max))"
        let started = ContinuousClock.now
        let outcome = await fixture.run("SELECT pg_sleep(10), '\(marker)'", timeout: .milliseconds(200))
        let took = ContinuousClock.now - started
        guard case .failure(let error) = outcome.result else {
            Issue.record("the sleep finished")
            return
        }
        #expect(error.isStatementTimeout, "\(error)")
        #expect(took < .seconds(3) * testTimeScale, "answered after \(took)")
        #expect(fixture.pool.statistics.statementTimeouts == 1)
        #expect(try await sleepingBackends(observer, marker: marker) == 0, "the server stopped it")
        #expect(try await fixture.run("SELECT 3").result.get().rows.first?[0] == .integer(3))
        #expect(fixture.pool.statistics.created == 1 && fixture.pool.statistics.closed == 0)
        await observer.close()
        await fixture.stop()
    }

    @Test("a caller that leaves mid-statement: cancelled on the server, no answer, the connection back healthy",
          arguments: PollerKind.allCases)
    func handleCancelsOnTheServer(poller: PollerKind) async throws {
        let fixture = try LoopDrivenFixture(poller: poller, maxConnections: 1)
        let observer = try ConnectionPool(url: TestDatabase.postgres.url(), logger: AgentDriverTests.logger)
        let marker = "loop_leave_\(UInt32.random(in: 0...UInt32.max))"
        let answered = Atomic<Int>(0)
        let handle = fixture.pool.stream("SELECT pg_sleep(10), '\(marker)'", [], firstBatch: 10,
                                         drivenBy: fixture.loop) { _ in answered.add(1, ordering: .relaxed) }
        #expect(await eventually { (try? await sleepingBackends(observer, marker: marker)) == 1 })
        let cancelled = ContinuousClock.now
        handle.cancel()
        #expect(await eventually { fixture.pool.statistics.inUse == 0 })
        #expect(ContinuousClock.now - cancelled < .seconds(5) * testTimeScale)
        #expect(try await sleepingBackends(observer, marker: marker) == 0)
        #expect(try await fixture.run("SELECT 4").result.get().rows.first?[0] == .integer(4))
        #expect(answered.load(ordering: .relaxed) == 0, "a cancelled statement is not answered")
        #expect(fixture.pool.statistics.created == 1)
        await observer.close()
        await fixture.stop()
    }

    @Test("the server ends the backend mid-statement: connection lost, the connection replaced, the next works",
          arguments: PollerKind.allCases)
    func brokenConnectionIsReplaced(poller: PollerKind) async throws {
        let fixture = try LoopDrivenFixture(poller: poller, maxConnections: 1)
        let observer = try ConnectionPool(url: TestDatabase.postgres.url(), logger: AgentDriverTests.logger)
        let marker = "loop_kill_\(UInt32.random(in: 0...UInt32.max))"
        async let outcome = fixture.run("SELECT pg_sleep(10), '\(marker)'")
        #expect(await eventually { (try? await sleepingBackends(observer, marker: marker)) == 1 })
        _ = try await observer.query("""
            SELECT pg_terminate_backend(pid) FROM pg_stat_activity
            WHERE pid <> pg_backend_pid() AND query LIKE '%' || CAST(? AS TEXT) || '%'
            """, [.text(marker)])
        guard case .failure(let error) = await outcome.result else {
            Issue.record("the statement succeeded")
            return
        }
        #expect(error.breaksConnection, "\(error)")
        #expect(try await fixture.run("SELECT 5").result.get().rows.first?[0] == .integer(5))
        let stats = fixture.pool.statistics
        #expect(stats.closed == 1 && stats.created == 2, "\(stats)")
        await observer.close()
        await fixture.stop()
    }

    @Test("the database restarting mid-run, on every poller: errors, none hangs; then statements run again")
    func loopDrivenRecoversWhenTheServerRestarts() async throws {
        var fixtures: [LoopDrivenFixture] = []
        for poller in PollerKind.allCases { fixtures.append(try LoopDrivenFixture(poller: poller)) }
        for fixture in fixtures { #expect(try await fixture.run("SELECT 1").result.get().rows.count == 1) }
        try await runDatabaseScript("stop-postgres")
        for fixture in fixtures {
            let started = ContinuousClock.now
            let outcome = await fixture.run("SELECT 1")
            if case .success = outcome.result { Issue.record("a statement succeeded while the database was down") }
            #expect(ContinuousClock.now - started < .seconds(10))
        }
        try await runDatabaseScript("start-postgres")
        for fixture in fixtures {
            let recovered = await eventually(timeout: .seconds(20)) {
                (try? await fixture.run("SELECT 6").result.get().rows.first?[0]) == .integer(6)
            }
            #expect(recovered)
            #expect(fixture.pool.statistics.closed >= 1, "the broken connection was dropped")
            await fixture.stop()
        }
    }

    @Test("through the agent on PostgreSQL: selects on the agent's loop, a caller that never grants holds one batch",
          arguments: PollerKind.allCases)
    func agentOnPostgres(poller: PollerKind) async throws {
        let group = try EventLoopGroup(ioLoops: 1, configuration: LoopConfiguration(poller: poller),
                                       placement: .roundRobin)
        let pool = try ConnectionPool(url: TestDatabase.postgres.url(),
                                      configuration: PoolConfiguration(minConnections: 0, maxConnections: 2),
                                      logger: AgentDriverTests.logger)
        let agent = DatabaseAgentServer(group: group, configuration: DatabaseAgentConfiguration(port0: ()),
                                        rules: try AccessFile.parse("""
                                            statement series = SELECT n FROM generate_series(1, ?) AS n
                                            token app statements=series
                                            """), pool: pool, logger: AgentDriverTests.logger)
        let port = Int(try await runOnDedicatedThread(name: "test-agent-start") { Result { try agent.start() } }
            .get().port)
        let client = try await DatabaseAgentClient.connect(port: port, token: "app", loop: group.next())
        let three = try await client.execute(statement: "series", [3]).rows
        #expect(three == [[.integer(1)], [.integer(2)], [.integer(3)]])
        let frames = try await AsyncFrameClient.connect(port: port, loop: group.next())
        var inbound = frames.frames.makeAsyncIterator()
        try await frames.send(execute: .named("series", [100_000]), id: 1, token: "app", batchRows: 10)
        #expect(kind(try await inbound.next()) == "columns")
        let first = try await inbound.next()
        #expect(try Switchyard_Dbagent_Rows(serializedBytes: first!.body).rows.count == 10)
        try await Task.sleep(for: .milliseconds(200))
        #expect(agent.statistics.rowsRead == 10 + 3, "one batch read for the caller that does not grant")
        #expect(pool.statistics.openStreams == 1)
        try await frames.send(Switchyard_Dbagent_Cancel.with { $0.requestID = 1 }, id: DatabaseAgentMessageID.cancel)
        #expect(kind(try await inbound.next()) == "error:\(Switchyard_Dbagent_ErrorKind.cancelled.rawValue)")
        #expect(await eventually { pool.statistics.inUse == 0 && agent.statistics.inFlight == 0 })
        await frames.close()
        await client.close()
        await runOnDedicatedThread(name: "test-agent-stop") { agent.shutdown() }
        await pool.close()
        await group.shutdown()
    }
}
#endif
