@testable import DatabaseAgent
import Storage
import Testing

/// A core over a small access file, on a mock clock (the tests pass `now`).
struct CoreHarness {
    var core: AgentRequestCore
    let counters: AgentCounters

    init(configuration: DatabaseAgentConfiguration = DatabaseAgentConfiguration(), access: String = CoreHarness.access)
        throws
    {
        let rules = try AccessFile.parse(access)
        counters = AgentCounters(tokenLabels: rules.tokens.map(\.label))
        core = AgentRequestCore(rules: rules, limits: .init(configuration),
                                limiter: TokenRateLimiter(rates: rules.tokens.map(\.rate)), counters: counters)
    }

    static let access = """
        statement one = SELECT ?
        statement all = SELECT * FROM t
        token full sql name=full
        token limited statements=one rows=3 name=limited
        token slow rate=2 name=slow
        """

    static func execute(_ id: UInt64, token: String = "full", name: String = "", sql: String = "",
                        parameters: [SQLValue] = [], rowLimit: UInt32 = 0, batchRows: UInt32 = 0)
        -> Switchyard_Dbagent_Execute
    {
        var request = Switchyard_Dbagent_Execute()
        request.requestID = id
        request.token = token
        request.statement = AgentStatement(name: name, sql: sql, parameters: parameters).wire
        request.rowLimit = rowLimit
        request.batchRows = batchRows
        return request
    }

    static func rows(_ range: Range<Int>) -> [[SQLValue]] { range.map { [.integer(Int64($0))] } }
}

extension AgentRequestCore.Action {
    var errorKind: Switchyard_Dbagent_ErrorKind? {
        if case .send(.error(let e), _) = self { return e.kind }
        return nil
    }
    var done: Switchyard_Dbagent_Done? {
        if case .send(.done(let d), _) = self { return d }
        return nil
    }
    var rowCount: Int? {
        if case .send(.rows(let r), _) = self { return r.rows.count }
        return nil
    }
    var lastChunk: Bool? {
        if case .send(.rows(let r), _) = self { return r.last }
        return nil
    }
    var isFetch: Bool {
        if case .fetch = self { return true }
        return false
    }
}

@Suite("Request core: checks, credit, truncation, cancel and timeouts without sockets")
struct RequestCoreTests {
    @Test("a named statement runs; its rows come a batch per grant; Done after the last")
    func creditFlow() throws {
        var h = try CoreHarness(configuration: DatabaseAgentConfiguration(defaultBatchRows: 10))
        let run = h.core.execute(CoreHarness.execute(1, name: "all"), now: 0)
        guard case .run(1, let sql, _, _, let batchRows, _)? = run.first else {
            Issue.record("\(run)")
            return
        }
        #expect(sql == "SELECT * FROM t" && batchRows == 10)
        var actions = h.core.started(1, columns: [ColumnInfo(name: "x")],
                                     batch: RowBatch(rows: CoreHarness.rows(0..<10), isLast: false), now: 1)
        #expect(actions.count == 2 && actions[1].rowCount == 10, "columns and one chunk: \(actions)")
        #expect(actions.filter(\.isFetch).isEmpty, "nothing more is read without a grant")
        // No grant: nothing happens however much time passes (below the credit timeout).
        #expect(h.core.tick(now: 30_000_000_000).isEmpty)
        actions = h.core.moreRows(1)
        #expect(actions == [.fetch(1, maxRows: 10)])
        // A second grant while fetching is kept for the next chunk.
        #expect(h.core.moreRows(1).isEmpty)
        actions = h.core.batchReady(1, RowBatch(rows: CoreHarness.rows(10..<20), isLast: false), now: 2)
        #expect(actions.count == 2 && actions[0].rowCount == 10 && actions[1].isFetch, "the kept grant: \(actions)")
        #expect(actions[0].lastChunk == false)
        actions = h.core.batchReady(1, RowBatch(rows: CoreHarness.rows(20..<25), isLast: true, affectedRows: 0), now: 3)
        #expect(actions.first?.rowCount == 5 && actions.first?.lastChunk == true, "the last chunk says so")
        #expect(actions.last?.done?.rowsSent == 25 && actions.last?.done?.truncated == false)
        #expect(actions.contains(.release(1)))
        #expect(h.core.openCount == 0 && h.counters.inFlight.value == 0)
        #expect(h.counters.snapshot.rowsRead == 25)
    }

    @Test("refusals: raw SQL without `sql`, a statement outside the token's list, unknown names, wrong counts")
    func refusals() throws {
        var h = try CoreHarness()
        #expect(h.core.execute(CoreHarness.execute(1, token: "limited", sql: "SELECT 1"), now: 0).first?.errorKind
            == .sqlNotAllowed)
        #expect(h.core.execute(CoreHarness.execute(2, token: "limited", name: "all"), now: 0).first?.errorKind
            == .unknownStatement)
        #expect(h.core.execute(CoreHarness.execute(3, name: "nope"), now: 0).first?.errorKind == .unknownStatement)
        #expect(h.core.execute(CoreHarness.execute(4, name: "one"), now: 0).first?.errorKind == .badRequest)
        #expect(h.core.execute(CoreHarness.execute(5, name: "one", sql: "SELECT 1"), now: 0).first?.errorKind
            == .badRequest)
        #expect(h.core.execute(CoreHarness.execute(6), now: 0).first?.errorKind == .badRequest)
        let big = String(repeating: "x", count: DatabaseAgentConfiguration().maxSQLBytes + 1)
        #expect(h.core.execute(CoreHarness.execute(7, sql: big), now: 0).first?.errorKind == .tooLarge)
        #expect(h.core.openCount == 0)
        let limited = h.counters.snapshot.tokens["limited"]!
        #expect(limited.requests == 2 && limited.errors == 2)
    }

    @Test("a used request id is refused; the open request goes on")
    func duplicateID() throws {
        var h = try CoreHarness()
        _ = h.core.execute(CoreHarness.execute(1, name: "all"), now: 0)
        #expect(h.core.execute(CoreHarness.execute(1, name: "all"), now: 0).first?.errorKind == .badRequest)
        #expect(h.core.openCount == 1)
    }

    @Test("rows=N caps the answer: the cut result ends with truncated; an exact fit is not truncated")
    func truncation() throws {
        var h = try CoreHarness()
        _ = h.core.execute(CoreHarness.execute(1, token: "limited", name: "one", parameters: [1]), now: 0)
        var actions = h.core.started(1, columns: [ColumnInfo(name: "x")], batch: RowBatch(rows: CoreHarness.rows(0..<3),
                                                                                          isLast: false), now: 0)
        #expect(actions.compactMap(\.rowCount) == [3])
        #expect(actions.last?.done?.truncated == true && actions.last?.done?.rowsSent == 3)
        _ = h.core.execute(CoreHarness.execute(2, token: "limited", name: "one", parameters: [1]), now: 0)
        actions = h.core.started(2, columns: [ColumnInfo(name: "x")], batch: RowBatch(rows: CoreHarness.rows(0..<3),
                                                                                      isLast: true), now: 0)
        #expect(actions.last?.done?.truncated == false)
        // The request's own limit below the token's.
        _ = h.core.execute(CoreHarness.execute(3, name: "all", rowLimit: 2), now: 0)
        actions = h.core.started(3, columns: [], batch: RowBatch(rows: CoreHarness.rows(0..<10), isLast: true), now: 0)
        #expect(actions.compactMap(\.rowCount) == [2] && actions.last?.done?.truncated == true)
    }

    @Test("no or wrong token: refused, logged once, the connection closed at the third")
    func unauthorized() throws {
        var h = try CoreHarness()
        var all: [AgentRequestCore.Action] = []
        all += h.core.execute(CoreHarness.execute(1, token: ""), now: 0)
        all += h.core.execute(CoreHarness.execute(2, token: "wrong"), now: 0)
        #expect(!all.contains(.close))
        all += h.core.batch(Switchyard_Dbagent_Batch.with { $0.requestID = 3; $0.token = "fulll" }, now: 0)
        #expect(all.compactMap(\.errorKind) == [.unauthorized, .unauthorized, .unauthorized])
        #expect(all.filter { if case .logUnauthorized = $0 { true } else { false } }.count == 1)
        #expect(all.last == .close)
        // After the close nothing more is taken.
        #expect(h.core.execute(CoreHarness.execute(4), now: 0).isEmpty)
        #expect(h.counters.snapshot.unauthorized == 3)
    }

    @Test("rate=2: two at once, the third refused, one more after half a second")
    func rateLimit() throws {
        var h = try CoreHarness()
        func kind(_ id: UInt64, _ now: UInt64) -> Switchyard_Dbagent_ErrorKind? {
            var request = CoreHarness.execute(id, token: "slow", name: "all")
            request.requestID = id
            let actions = h.core.execute(request, now: now)
            _ = h.core.cancel(id)
            return actions.first?.errorKind
        }
        #expect(kind(1, 1_000) == nil)
        #expect(kind(2, 1_000) == nil)
        #expect(kind(3, 1_000) == .rateLimited)
        #expect(kind(4, 400_000_000) == .rateLimited)
        #expect(kind(5, 501_000_000) == nil)
        #expect(kind(6, 501_000_000) == .rateLimited)
        let slow = h.counters.snapshot.tokens["slow"]!
        #expect(slow.rateLimited == 3 && slow.requests == 6)
    }

    @Test("open requests per connection and in the agent are bounded: more are refused busy")
    func busy() throws {
        var h = try CoreHarness(configuration: DatabaseAgentConfiguration(maxRequestsPerConnection: 2,
                                                                          maxRequestsInFlight: 3))
        #expect(h.core.execute(CoreHarness.execute(1, name: "all"), now: 0).first?.errorKind == nil)
        #expect(h.core.execute(CoreHarness.execute(2, name: "all"), now: 0).first?.errorKind == nil)
        #expect(h.core.execute(CoreHarness.execute(3, name: "all"), now: 0).first?.errorKind == .busy)
        // A second connection shares the agent-wide bound.
        let rules = h.core.rules
        var other = AgentRequestCore(rules: rules, limits: h.core.limits, limiter: h.core.limiter,
                                     counters: h.counters)
        #expect(other.execute(CoreHarness.execute(1, name: "all"), now: 0).first?.errorKind == nil)
        #expect(other.execute(CoreHarness.execute(2, name: "all"), now: 0).first?.errorKind == .busy)
        _ = h.core.closed()
        #expect(other.execute(CoreHarness.execute(3, name: "all"), now: 0).first?.errorKind == nil)
        #expect(h.counters.snapshot.busy == 2)
    }

    @Test("Cancel mid-stream releases the request and answers cancelled; late batches are dropped")
    func cancel() throws {
        var h = try CoreHarness()
        _ = h.core.execute(CoreHarness.execute(1, name: "all", batchRows: 5), now: 0)
        _ = h.core.started(1, columns: [ColumnInfo(name: "x")], batch: RowBatch(rows: CoreHarness.rows(0..<5),
                                                                                isLast: false), now: 0)
        #expect(h.core.moreRows(1) == [.fetch(1, maxRows: 5)])
        let actions = h.core.cancel(1)
        #expect(actions.first == .release(1) && actions.last?.errorKind == .cancelled)
        #expect(h.core.batchReady(1, RowBatch(rows: CoreHarness.rows(5..<10), isLast: false), now: 0) == [.release(1)])
        #expect(h.core.cancel(1).isEmpty && h.core.openCount == 0)
    }

    @Test("a caller that grants nothing for the credit timeout: the request ends with timeout")
    func creditTimeout() throws {
        var h = try CoreHarness(configuration: DatabaseAgentConfiguration(creditTimeout: .seconds(2)))
        _ = h.core.execute(CoreHarness.execute(1, name: "all", batchRows: 5), now: 0)
        _ = h.core.started(1, columns: [], batch: RowBatch(rows: CoreHarness.rows(0..<5), isLast: false),
                           now: 1_000_000_000)
        #expect(h.core.tick(now: 2_900_000_000).isEmpty)
        let actions = h.core.tick(now: 3_000_000_000)
        #expect(actions.first == .release(1) && actions.last?.errorKind == .timeout)
        #expect(h.counters.snapshot.creditTimeouts == 1 && h.core.openCount == 0)
    }

    @Test("the statement timeout ends a request still starting (or a transaction), not one already streaming")
    func statementTimeout() throws {
        var h = try CoreHarness()
        _ = h.core.execute(CoreHarness.execute(1, name: "all", batchRows: 5), now: 0)
        let ended = h.core.timedOut(1)
        #expect(ended.first == .expire(1) && ended.last?.errorKind == .timeout)
        #expect(h.core.started(1, columns: [], batch: RowBatch(rows: [], isLast: true), now: 0) == [.release(1)],
                "the late result is dropped")
        _ = h.core.execute(CoreHarness.execute(2, name: "all", batchRows: 5), now: 0)
        _ = h.core.started(2, columns: [], batch: RowBatch(rows: CoreHarness.rows(0..<5), isLast: false), now: 0)
        #expect(h.core.timedOut(2).isEmpty && h.core.openCount == 1)
        _ = h.core.batch(Switchyard_Dbagent_Batch.with {
            $0.requestID = 3
            $0.token = "full"
            $0.statements = [AgentStatement.sql("DELETE FROM t").wire]
        }, now: 0)
        #expect(h.core.timedOut(3).last?.errorKind == .timeout)
        #expect(h.core.batchFinished(3, BatchOutcome(affectedRows: 1, lastInsertID: nil)).isEmpty)
    }

    @Test("a row too large for a frame is refused; big results are cut into chunks under the frame bound")
    func chunkBytes() throws {
        var h = try CoreHarness(configuration: DatabaseAgentConfiguration(maxFrameBodyLength: 4096, maxSQLBytes: 1024))
        _ = h.core.execute(CoreHarness.execute(1, name: "all"), now: 0)
        let rows = (0..<10).map { _ in [SQLValue.blob([UInt8](repeating: 7, count: 1000))] }
        let actions = h.core.started(1, columns: [], batch: RowBatch(rows: rows, isLast: true), now: 0)
        let chunks = actions.compactMap(\.rowCount)
        #expect(chunks.reduce(0, +) == 10 && chunks.count >= 3, "\(chunks)")
        _ = h.core.execute(CoreHarness.execute(2, name: "all"), now: 0)
        let huge = h.core.started(2, columns: [], batch: RowBatch(rows: [[.blob([UInt8](repeating: 1, count: 5000))]],
                                                                  isLast: true), now: 0)
        #expect(huge.last?.errorKind == .tooLarge)
    }

    @Test("runner errors: the driver's code and message; pool exhaustion is busy; timeouts are timeout")
    func runnerErrors() throws {
        var h = try CoreHarness()
        _ = h.core.execute(CoreHarness.execute(1, name: "all"), now: 0)
        let failure = StorageError.constraintViolation(.init("UNIQUE failed", code: "2067", driver: "sqlite"))
        let e = h.core.failed(1, failure, now: 0).last
        guard case .send(.error(let error), _)? = e else {
            Issue.record("\(String(describing: e))")
            return
        }
        #expect(error.kind == .database && error.driverCode == "2067" && error.driver == "sqlite"
            && error.storageKind == "constraintViolation" && error.message == "UNIQUE failed")
        _ = h.core.execute(CoreHarness.execute(2, name: "all"), now: 0)
        #expect(h.core.failed(2, StorageError.timeout(.init("no connection")), now: 0).last?.errorKind == .busy)
        _ = h.core.execute(CoreHarness.execute(3, name: "all"), now: 0)
        #expect(h.core.failed(3, RunnerError.timeout(.seconds(1)), now: 0).last?.errorKind == .timeout)
    }
}
