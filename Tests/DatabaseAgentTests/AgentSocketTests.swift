@testable import DatabaseAgent
import Foundation
import LarsWire
import Messaging
import Reactor
import Storage
import SwiftProtobuf
import Testing
import TestSupport

@Suite("Database agent over sockets: types, tokens, batches, backpressure, bad frames", .timeLimit(.minutes(2)))
struct AgentSocketTests {
    @Test("types round trip: int64 edges, doubles, Unicode text, NULL, a 1 MiB blob", arguments: PollerKind.allCases)
    func typesRoundTrip(poller: PollerKind) async throws {
        let running = try await RunningAgent(poller: poller, bigRows: 0)
        let client = try await running.client()
        let blob = (0..<(1 << 20)).map { UInt8(truncatingIfNeeded: $0 &* 31 &+ 7) }
        let rows: [[SQLValue]] = [
            [.integer(.min), .double(-0.5), .text("héllo wörld 世界 🚀"), .blob([]), .null],
            [.integer(.max), .double(.greatestFiniteMagnitude), .text(""), .blob([0, 255, 0]), .text("x")],
            [.integer(0), .double(.leastNonzeroMagnitude), .text("tab\tnew\nline\u{0}nul"), .blob(blob), .null],
            [.integer(-1), .double(1.5), .null, .null, .null],
        ]
        for row in rows {
            let inserted = try await client.execute(statement: "insert_t", row)
            #expect(inserted.affectedRows == 1 && inserted.lastInsertID != nil)
        }
        let back = try await client.execute(statement: "select_t")
        #expect(back.columns.map(\.name) == ["i", "d", "s", "b", "n"])
        #expect(back.columns.first?.type == .integer)
        #expect(back.rows.count == rows.count)
        for (got, sent) in zip(back.rows, rows) { #expect(got == sent) }
        await client.close()
        await running.stop()
    }

    @Test("named statements for a token with a list; raw SQL refused without `sql`; names outside the list refused",
          arguments: PollerKind.allCases)
    func tokensAndStatements(poller: PollerKind) async throws {
        let running = try await RunningAgent(poller: poller, bigRows: 5)
        let app = try await running.client(token: "app")
        #expect(try await app.execute(statement: "count_t").rows == [[.integer(0)]])
        await #expect(throws: DatabaseAgentClientError.self) { try await app.execute(sql: "SELECT 1") }
        do {
            _ = try await app.execute(sql: "DELETE FROM big")
        } catch {
            #expect(error.kind == .sqlNotAllowed)
        }
        do {
            _ = try await app.execute(statement: "slow")
            Issue.record("ran a statement outside the token's list")
        } catch {
            #expect(error.kind == .unknownStatement)
        }
        let admin = try await running.client(token: "admin")
        #expect(try await admin.execute(sql: "SELECT COUNT(*) FROM big").rows == [[.integer(5)]])
        #expect(try await admin.execute(statement: "count_t").rows == [[.integer(0)]], "no list: every statement")
        do {
            _ = try await admin.execute(sql: "SELECT * FROM no_such_table")
            Issue.record("no error")
        } catch {
            #expect(error.kind == .database && error.driver == "sqlite" && error.storageKind == "syntax", "\(error)")
            #expect(error.message.contains("no_such_table"))
        }
        let stats = running.agent.statistics
        #expect(stats.tokens["app"]?.requests == 4 && stats.tokens["app"]?.errors == 3, "\(stats)")
        await app.close()
        await admin.close()
        await running.stop()
    }

    @Test("injection strings as parameters are stored literally", arguments: PollerKind.allCases)
    func injectionIsLiteral(poller: PollerKind) async throws {
        let running = try await RunningAgent(poller: poller, bigRows: 0)
        let client = try await running.client()
        let evil = ["'; DROP TABLE t; --", "Robert'); DROP TABLE big;--", "\" OR \"1\"=\"1", "1; DELETE FROM t", "?"]
        for text in evil {
            _ = try await client.execute(statement: "insert_t", [1, 1.0, .text(text), .null, .text(text)])
        }
        let back = try await client.execute(statement: "select_t")
        #expect(back.rows.map { $0[2] } == evil.map { .text($0) })
        #expect(back.rows.map { $0[4] } == evil.map { .text($0) })
        #expect(try await client.execute(statement: "count_t").rows == [[.integer(Int64(evil.count))]])
        await client.close()
        await running.stop()
    }

    @Test("a batch that fails half way leaves nothing; one that succeeds commits all", arguments: PollerKind.allCases)
    func batchAllOrNothing(poller: PollerKind) async throws {
        let running = try await RunningAgent(poller: poller, bigRows: 0)
        let client = try await running.client()
        do {
            _ = try await client.batch([.named("insert_pk", [1, "a"]), .named("insert_pk", [2, "b"]),
                                        .named("insert_pk", [1, "duplicate"]), .named("insert_pk", [3, "c"])])
            Issue.record("the batch succeeded")
        } catch {
            #expect(error.kind == .database && error.storageKind == "constraintViolation", "\(error)")
        }
        #expect(try await client.execute(statement: "count_t").rows == [[.integer(0)]])
        let done = try await client.batch([.named("insert_pk", [1, "a"]), .named("insert_pk", [2, "b"])])
        #expect(done.affectedRows == 2 && done.lastInsertID == 2)
        #expect(try await client.execute(statement: "count_t").rows == [[.integer(2)]])
        await client.close()
        await running.stop()
    }

    @Test("rows=7 caps every answer of the token, with the truncated flag", arguments: PollerKind.allCases)
    func rowCap(poller: PollerKind) async throws {
        let running = try await RunningAgent(poller: poller, bigRows: 100)
        let capped = try await running.client(token: "capped")
        let result = try await capped.execute(.named("big"), batchRows: 3)
        #expect(result.rows.count == 7 && result.truncated)
        #expect(result.rows.map { $0[0] } == (0..<7).map { SQLValue.integer(Int64($0)) })
        let app = try await running.client(token: "app")
        let whole = try await app.execute(statement: "big")
        #expect(whole.rows.count == 100 && !whole.truncated)
        let limited = try await app.execute(.named("big"), rowLimit: 10)
        #expect(limited.rows.count == 10 && limited.truncated)
        #expect(running.agent.statistics.tokens["capped"]?.rows == 7)
        await capped.close()
        await app.close()
        await running.stop()
    }

    @Test("rate=3: a burst of 3, then rate limited", arguments: PollerKind.allCases)
    func rateLimited(poller: PollerKind) async throws {
        let running = try await RunningAgent(poller: poller, bigRows: 0)
        let client = try await running.client(token: "slowpoke")
        // Twelve requests at once on one connection: they reach the agent in one burst, whatever the machine's load.
        let kinds = await withTaskGroup(of: DatabaseAgentClientError.Kind?.self) { group in
            for _ in 0..<12 {
                group.addTask {
                    do {
                        _ = try await client.execute(statement: "count_t")
                        return nil
                    } catch let error as DatabaseAgentClientError {
                        return error.kind
                    } catch {
                        return .connectionClosed
                    }
                }
            }
            var all: [DatabaseAgentClientError.Kind?] = []
            for await kind in group { all.append(kind) }
            return all
        }
        // 3 at once and 3 a second after: of a burst, at least the 3 pass and some are refused.
        let limited = DatabaseAgentClientError.Kind.rateLimited
        let passed = kinds.filter { $0 == nil }.count
        let refused = kinds.filter { $0 == limited }.count
        #expect(passed >= 3 && refused >= 1 && passed + refused == kinds.count, "\(kinds)")
        #expect(running.agent.statistics.tokens["slowpoke"]?.rateLimited == refused)
        await client.close()
        await running.stop()
    }

    @Test("a wrong token three times closes the connection; one log line for many such callers; others go on",
          arguments: PollerKind.allCases)
    func wrongTokenCloses(poller: PollerKind) async throws {
        let running = try await RunningAgent(poller: poller, bigRows: 0)
        let good = try await running.client()
        let bad = try await running.client(token: "guess")
        for attempt in 1...3 {
            do {
                _ = try await bad.execute(statement: "count_t")
                Issue.record("a wrong token was served")
            } catch {
                #expect(error.kind == .unauthorized, "attempt \(attempt): \(error)")
            }
        }
        #expect(await eventually { running.agent.connectionCount == 1 }, "the bad connection is closed")
        do {
            _ = try await bad.execute(statement: "count_t")
            Issue.record("the closed connection answered")
        } catch {
            #expect(error.kind == .connectionClosed)
        }
        #expect(try await good.execute(statement: "count_t").rows == [[.integer(0)]])
        // More bad callers within the episode: refused and closed the same, no more lines.
        for _ in 0..<3 {
            let another = try await running.client(token: "")
            for _ in 0..<3 { _ = try? await another.execute(statement: "count_t") }
            await another.close()
        }
        let lines = running.logs.get().filter { $0.message.contains("without a valid token") }
        #expect(lines.count == 1, "\(lines)")
        #expect(lines.first?.metadata["peer.address"] != nil)
        #expect(running.agent.statistics.unauthorized == 12 && running.agent.statistics.authClosed == 4)
        await good.close()
        await bad.close()
        await running.stop()
    }

    @Test("garbage, oversize and undecodable frames close that connection only", arguments: PollerKind.allCases)
    func badFrames(poller: PollerKind) async throws {
        let running = try await RunningAgent(poller: poller, bigRows: 0)
        let good = try await running.client()
        let port = UInt16(running.port)
        let garbage = try BlockingSocket(port: port, receiveTimeout: 10)
        try garbage.sendAll([0x2C, 0x01, 0, 0, 0xFF, 0xFF, 0xFF, 0xFF, 1, 2, 3])  // negative length
        let oversize = try BlockingSocket(port: port, receiveTimeout: 10)
        var header = FrameParser.header(messageID: 300, bodyLength: 64 << 20)
        try oversize.sendAll(withUnsafeBytes(of: &header) { Array($0) })
        let undecodable = try BlockingSocket(port: port, receiveTimeout: 10)
        try undecodable.sendAll(FrameParser.encode(messageID: 300, body: [0xFF, 0xFF, 0xFF]))
        #expect(garbage.seesClose() && oversize.seesClose() && undecodable.seesClose())
        #expect(try await good.execute(statement: "count_t").rows == [[.integer(0)]])
        #expect(running.agent.connectionCount == 1)
        garbage.close()
        oversize.close()
        undecodable.close()
        await good.close()
        await running.stop()
    }

    @Test("a caller that never sends MoreRows: the agent has read one batch, no more; a grant reads one more",
          arguments: PollerKind.allCases)
    func neverMoreRows(poller: PollerKind) async throws {
        let running = try await RunningAgent(poller: poller, bigRows: 10_000)
        let frames = try await running.frames()
        var inbound = frames.frames.makeAsyncIterator()
        try await frames.send(execute: .named("big"), id: 1, token: "app", batchRows: 10)
        #expect(kind(try await inbound.next()) == "columns")
        let first = try await inbound.next()
        #expect(kind(first) == "rows")
        #expect(try Switchyard_Dbagent_Rows(serializedBytes: first!.body).rows.count == 10)
        // Another request on the same connection goes through meanwhile (so the agent has handled everything sent
        // so far); the stalled one has still had one batch read.
        try await frames.send(execute: .named("count_t"), id: 2, token: "app")
        var seen: [String] = []
        while seen.last != "done" { seen.append(kind(try await inbound.next())) }
        #expect(seen == ["columns", "rows", "done"])
        #expect(running.agent.statistics.rowsRead == 10 + 1, "\(running.agent.statistics)")
        #expect(running.agent.statistics.inFlight == 1)
        try await frames.send(Switchyard_Dbagent_MoreRows.with { $0.requestID = 1 },
                              id: DatabaseAgentMessageID.moreRows)
        let second = try await inbound.next()
        #expect(kind(second) == "rows")
        let rows = try Switchyard_Dbagent_Rows(serializedBytes: second!.body).rows
        #expect(rows.first?.values.first?.integer == 10 && rows.count == 10)
        #expect(running.agent.statistics.rowsRead == 20 + 1)
        // Cancel mid-stream: answered cancelled, nothing left open.
        try await frames.send(Switchyard_Dbagent_Cancel.with { $0.requestID = 1 }, id: DatabaseAgentMessageID.cancel)
        #expect(kind(try await inbound.next()) == "error:\(Switchyard_Dbagent_ErrorKind.cancelled.rawValue)")
        #expect(await eventually { running.agent.statistics.inFlight == 0 })
        await frames.close()
        await running.stop()
    }

    @Test("the async client streams 10,000 rows in batches, granting as it consumes", arguments: PollerKind.allCases)
    func streaming(poller: PollerKind) async throws {
        let running = try await RunningAgent(poller: poller, bigRows: 10_000)
        let client = try await running.client()
        let stream = try await client.stream(.named("big"), batchRows: 500)
        #expect(stream.columns.map(\.name) == ["k", "label"])
        var batches = 0
        var next: Int64 = 0
        for try await batch in stream {
            batches += 1
            #expect(batch.count <= 500)
            // The agent never runs more than a batch or two ahead of what was consumed.
            #expect(running.agent.statistics.rowsRead <= Int(next) + batch.count + 2 * 500)
            for row in batch {
                #expect(row == [.integer(next), .text("row \(next)")])
                next += 1
            }
        }
        #expect(next == 10_000 && batches == 20)
        #expect(stream.result?.truncated == false)
        // Many requests at once on one connection come back to their callers.
        let results = try await withThrowingTaskGroup(of: (Int, AgentResult).self) { group in
            for n in 0..<16 {
                group.addTask { (n, try await client.execute(.named("big"), rowLimit: n + 1, batchRows: 4)) }
            }
            return try await group.reduce(into: [:]) { $0[$1.0] = $1.1 }
        }
        for (n, result) in results { #expect(result.rows.count == n + 1) }
        await client.close()
        await running.stop()
    }

    @Test("the blocking client: statements, batches and errors from a plain thread", arguments: PollerKind.allCases)
    func blockingClient(poller: PollerKind) async throws {
        let running = try await RunningAgent(poller: poller, bigRows: 300)
        let port = running.port
        let outcome = await runOnDedicatedThread(name: "test-blocking") { () -> Result<[Int], Error> in
            Result {
                let client = try BlockingDatabaseAgentClient(port: port, token: "app", timeout: .seconds(10))
                let all = try client.execute(.named("big"), batchRows: 16)
                let batch = try client.batch([.named("insert_pk", [1, "a"]), .named("insert_pk", [2, "b"])])
                var refused = 0
                do {
                    _ = try client.execute(sql: "SELECT 1")
                } catch let error as DatabaseAgentClientError {
                    refused = error.kind == .sqlNotAllowed ? 1 : -1
                }
                let count = try client.execute(statement: "count_t")
                return [all.rows.count, Int(batch.affectedRows), refused, Int(count.rows[0][0].int64 ?? -1)]
            }
        }
        #expect(try outcome.get() == [300, 2, 1, 2])
        await running.stop()
    }
}

extension Switchyard_Dbagent_Value {
    var integer64: Int64? { if case .integer(let v)? = kind { v } else { nil } }
}

/// A runner whose statements take `delay` (watching cancellation), over the pool's otherwise.
struct SlowRunner: StatementRunner {
    let inner: PoolStatementRunner
    let delay: Duration

    func run(_ sql: String, _ parameters: [SQLValue], timeout: Duration) async throws -> any RowSource {
        if sql.contains("slow") {
            try await Task.sleep(for: delay)  // ends early when the agent cancels the request
            return WholeResultSource(SQLResult())
        }
        return try await inner.run(sql, parameters, timeout: timeout)
    }

    func runBatch(_ statements: [(sql: String, parameters: [SQLValue])], timeout: Duration) async throws
        -> BatchOutcome
    {
        try await inner.runBatch(statements, timeout: timeout)
    }
}

@Suite("Database agent: timeouts", .timeLimit(.minutes(1)))
struct AgentTimeoutTests {
    @Test("a statement past its 200 ms timeout: timeout answered, the statement interrupted, its connection back",
          arguments: PollerKind.allCases)
    func poolStatementTimeout(poller: PollerKind) async throws {
        let running = try await RunningAgent(poller: poller)
        let admin = try await running.client(token: "admin")
        let start = ContinuousClock.now
        do {
            // 10^12 rows to count: it ends only when interrupted.
            _ = try await admin.execute(sql: "SELECT COUNT(*) FROM big a, big b, big c, big d",
                                        timeout: .milliseconds(200))
            Issue.record("no timeout")
        } catch {
            #expect(error.kind == .timeout, "\(error)")
        }
        #expect(ContinuousClock.now - start < .seconds(5))
        #expect(await eventually {
            let stats = running.pool.statistics
            return stats.statementTimeouts == 1 && stats.inUse == 0 && stats.openStreams == 0
        }, "\(running.pool.statistics)")
        #expect(running.agent.statistics.inFlight == 0)
        #expect(try await admin.execute(sql: "SELECT COUNT(*) FROM big").rows == [[.integer(1000)]])
        await admin.close()
        await running.stop()
    }

    @Test("a task cancelled while its execute waits gets cancelled at once, the agent ends the request, the next works",
          arguments: PollerKind.allCases)
    func cancelledTask(poller: PollerKind) async throws {
        let running = try await RunningAgent(poller: poller, bigRows: 3)
        let agent = DatabaseAgentServer(
            group: running.group, configuration: DatabaseAgentConfiguration(port0: ()),
            rules: try AccessFile.parse("token t sql\n"),
            runner: SlowRunner(inner: PoolStatementRunner(pool: running.pool), delay: .seconds(30)),
            logger: .init(label: "test"))
        let port = Int(try await runOnDedicatedThread(name: "start") { Result { try agent.start() } }.get().port)
        let client = try await DatabaseAgentClient.connect(port: port, token: "t", loop: running.group.next())
        let waiting = Task { () -> DatabaseAgentClientError.Kind? in
            do {
                _ = try await client.execute(sql: "SELECT 'slow'")
                return nil
            } catch let error as DatabaseAgentClientError {
                return error.kind
            } catch {
                return nil
            }
        }
        #expect(await eventually { agent.statistics.inFlight == 1 })
        waiting.cancel()
        #expect(try await withTimeout(10) { await waiting.value } == .cancelled)
        // The client told the agent: the statement (30 s) is released long before it would end.
        #expect(await eventually { agent.statistics.inFlight == 0 })
        #expect(try await client.execute(sql: "SELECT COUNT(*) FROM big").rows == [[.integer(3)]])
        await client.close()
        await runOnDedicatedThread(name: "stop") { agent.shutdown() }
        await running.stop()
    }

    @Test("a 10 s statement with a 200 ms timeout answers timeout in under a second; the next one works",
          arguments: PollerKind.allCases)
    func statementTimeout(poller: PollerKind) async throws {
        let running = try await RunningAgent(poller: poller, bigRows: 3)
        let agent = DatabaseAgentServer(
            group: running.group, configuration: DatabaseAgentConfiguration(port0: ()),
            rules: try AccessFile.parse("token t sql\n"),
            runner: SlowRunner(inner: PoolStatementRunner(pool: running.pool), delay: .seconds(10)),
            logger: .init(label: "test"))
        let port = Int(try await runOnDedicatedThread(name: "start") { Result { try agent.start() } }.get().port)
        let client = try await DatabaseAgentClient.connect(port: port, token: "t", loop: running.group.next())
        let start = ContinuousClock.now
        do {
            _ = try await client.execute(sql: "SELECT 'slow'", timeout: .milliseconds(200))
            Issue.record("no timeout")
        } catch {
            #expect(error.kind == .timeout, "\(error)")
        }
        let took = ContinuousClock.now - start
        // The statement would take 10 s; the timeout answers at 200 ms (loose bound: beside the whole suite, the
        // client's tasks may wait seconds for a thread).
        #expect(took < .seconds(5), "took \(took)")
        #expect(try await client.execute(sql: "SELECT COUNT(*) FROM big").rows == [[.integer(3)]])
        #expect(agent.statistics.inFlight == 0)
        await client.close()
        await runOnDedicatedThread(name: "stop") { agent.shutdown() }
        await running.stop()
    }

    @Test("open requests per connection are bounded: the next one is busy; a Cancel of a running one frees a slot",
          arguments: PollerKind.allCases)
    func openRequestsBounded(poller: PollerKind) async throws {
        let running = try await RunningAgent(poller: poller, bigRows: 0)
        var configuration = DatabaseAgentConfiguration(port0: ())
        configuration.maxRequestsPerConnection = 4
        let agent = DatabaseAgentServer(
            group: running.group, configuration: configuration, rules: try AccessFile.parse("token t sql\n"),
            runner: SlowRunner(inner: PoolStatementRunner(pool: running.pool), delay: .seconds(30)),
            logger: .init(label: "test"))
        let port = Int(try await runOnDedicatedThread(name: "start") { Result { try agent.start() } }.get().port)
        let frames = try await AsyncFrameClient.connect(port: port, loop: running.group.next())
        var inbound = frames.frames.makeAsyncIterator()
        for id in 1...5 { try await frames.send(execute: .sql("SELECT 'slow'"), id: UInt64(id), token: "t") }
        #expect(kind(try await inbound.next()) == "error:\(Switchyard_Dbagent_ErrorKind.busy.rawValue)")
        #expect(agent.statistics.inFlight == 4 && agent.statistics.busy == 1)
        try await frames.send(Switchyard_Dbagent_Cancel.with { $0.requestID = 2 }, id: DatabaseAgentMessageID.cancel)
        let cancelled = try await inbound.next()
        #expect(kind(cancelled) == "error:\(Switchyard_Dbagent_ErrorKind.cancelled.rawValue)")
        #expect(try Switchyard_Dbagent_Error(serializedBytes: cancelled!.body).requestID == 2)
        try await frames.send(execute: .sql("SELECT 'fast'"), id: 6, token: "t")
        var seen: [String] = []
        while seen.last != "done" { seen.append(kind(try await inbound.next())) }
        #expect(seen == ["columns", "rows", "done"], "the freed slot serves")
        await frames.close()
        #expect(await eventually { agent.statistics.inFlight == 0 }, "a closed connection releases its requests")
        await runOnDedicatedThread(name: "stop") { agent.shutdown() }
        await running.stop()
    }
}
