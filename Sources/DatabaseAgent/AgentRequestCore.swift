import Storage

/// The requests of one connection: a pure state machine (no I/O, no clock of its own) that takes what arrived (a
/// request, a grant, a batch of rows from the runner, the time) and returns what to do (``Action``). The server's
/// connection shell performs the actions: it sends the answers, runs statements through the runner, and feeds the
/// results back, all on the connection's loop.
///
/// A request's life:
///
///     execute --checks (token, open requests, rate, statement, sizes)--> refused: Error
///        \--> starting (run + first batch) --> streaming: Rows chunk sent
///                 streaming --a grant held--> fetching --batch--> streaming ... --last batch or row limit--> Done
///                 streaming --no grant for creditTimeout--> Error TIMEOUT
///        any state --Cancel--> Error CANCELLED; --runner failed--> Error; --connection closed--> released
///
/// At most one batch of a request is ever asked for at a time, and the next one only after the caller granted a chunk
/// (the first chunk is free): a caller that never sends MoreRows costs the agent one batch.
struct AgentRequestCore {
    /// What the shell does for the core.
    enum Action: Equatable {
        /// Send an answer; `token` is the request's token (for the counters), when known.
        case send(Answer, token: Int?)
        /// Run a statement, then read its first batch of at most `batchRows` rows; report with
        /// ``started(_:columns:batch:now:)`` or ``failed(_:_:now:)``, and ``timedOut(_:)`` when `timeout` passes
        /// first (the shell's timer on the loop: the caller is answered even if the runner cannot stop the statement).
        case run(UInt64, sql: String, parameters: [SQLValue], timeout: Duration, batchRows: Int, token: Int)
        /// Run statements in one transaction; report with ``batchFinished(_:_:)`` or ``failed(_:_:now:)``, and
        /// ``timedOut(_:)`` when `timeout` passes first.
        case runBatch(UInt64, statements: [PlannedStatement], timeout: Duration, token: Int)
        /// Begin, commit or roll back the connection's transaction (AgentTransactions.swift); report with
        /// ``batchFinished(_:_:)`` or ``failed(_:_:now:)``.
        case transaction(UInt64, action: Switchyard_Dbagent_TransactionAction, timeout: Duration, token: Int)
        /// Read the next batch of the request's source; report with ``batchReady(_:_:now:)`` or ``failed(_:_:now:)``.
        case fetch(UInt64, maxRows: Int)
        /// The request is over: cancel its work in progress and drop its source.
        case release(UInt64)
        /// As `release`, because the request's timeout passed: its statement is cancelled as timed out.
        case expire(UInt64)
        /// The connection's first request without a valid token: log it (once per episode across connections).
        case logUnauthorized(reason: String)
        /// Close the connection (after the answers before this action are out).
        case close
    }

    /// An answer to the caller.
    enum Answer: Equatable {
        case columns(Switchyard_Dbagent_Columns)
        case rows(Switchyard_Dbagent_Rows)
        case done(Switchyard_Dbagent_Done)
        case error(Switchyard_Dbagent_Error)
        case welcome(Switchyard_Dbagent_Welcome)
    }

    /// A statement resolved to its SQL.
    struct PlannedStatement: Equatable, Sendable {
        var sql: String
        var parameters: [SQLValue]
    }

    /// The bounds the core keeps (from ``DatabaseAgentConfiguration``).
    struct Limits {
        var maxOpen: Int
        var maxInFlight: Int
        var maxCredit: Int
        var creditTimeoutNs: UInt64?
        var defaultBatchRows: Int
        var maxBatchRows: Int
        var defaultTimeout: Duration
        var maxTimeout: Duration
        var maxSQLBytes: Int
        var maxParameters: Int
        var maxBatchStatements: Int
        var maxAuthFailures: Int
        var maxTransactionTimeout: Duration
        var maxTransactions: Int
        var maxFrameBodyLength: Int
        /// Rows chunks are cut so their body stays under this (the frame bound less room for the envelope).
        var maxChunkBytes: Int

        init(_ c: DatabaseAgentConfiguration) {
            maxOpen = c.maxRequestsPerConnection
            maxInFlight = c.maxRequestsInFlight
            maxCredit = c.maxCredit
            creditTimeoutNs = c.creditTimeout.map { UInt64($0.components.seconds) * 1_000_000_000
                + UInt64($0.components.attoseconds / 1_000_000_000) }
            defaultBatchRows = c.defaultBatchRows
            maxBatchRows = c.maxBatchRows
            defaultTimeout = c.defaultTimeout
            maxTimeout = c.maxTimeout
            maxSQLBytes = c.maxSQLBytes
            maxParameters = c.maxParameters
            maxBatchStatements = c.maxBatchStatements
            maxAuthFailures = c.maxAuthFailures
            maxTransactionTimeout = c.transactionTimeout
            maxTransactions = c.maxTransactions
            maxFrameBodyLength = c.maxFrameBodyLength
            maxChunkBytes = c.maxFrameBodyLength - 64
        }
    }

    private enum Phase {
        /// The statement runs (or its first batch is read).
        case starting
        /// A later batch is being read.
        case fetching
        /// A chunk was sent; waiting for a grant since this instant.
        case waitingCredit(since: UInt64)
        /// A transaction batch runs.
        case batch
    }

    private struct Open {
        var token: Int
        var phase: Phase
        var rowLimit: Int?
        var batchRows: Int
        var sent = 0
        var credit = 0
    }

    let rules: AccessRules
    let limits: Limits
    let limiter: TokenRateLimiter
    let counters: AgentCounters
    /// The database behind the agent, told in Welcome ("sqlite", "mysql", "postgres"; empty when not known).
    var dialect = ""
    private var open: [UInt64: Open] = [:]
    private(set) var authFailures = 0
    private var closing = false

    init(rules: AccessRules, limits: Limits, limiter: TokenRateLimiter, counters: AgentCounters) {
        self.rules = rules
        self.limits = limits
        self.limiter = limiter
        self.counters = counters
    }

    /// Requests open now.
    var openCount: Int { open.count }

    // MARK: Requests

    /// An Execute arrived.
    mutating func execute(_ request: Switchyard_Dbagent_Execute, now: UInt64) -> [Action] {
        let id = request.requestID
        var refusal: [Action] = []
        guard let token = admit(id: id, token: request.token, now: now, refusal: &refusal) else { return refusal }
        let planned: PlannedStatement
        switch plan(request.statement, token: token) {
        case .failure(let refusal): return refuse(id, refusal.kind, refusal.message, token: token)
        case .success(let p): planned = p
        }
        if let busy = takeInFlight(id, token: token) { return busy }
        let grantRows = rules.tokens[token].maxRows
        let asked = request.rowLimit == 0 ? nil : Int(request.rowLimit)
        let rowLimit = [asked, grantRows].compactMap { $0 }.min()
        var batchRows = request.batchRows == 0 ? limits.defaultBatchRows
            : min(Int(request.batchRows), limits.maxBatchRows)
        if let rowLimit { batchRows = max(1, min(batchRows, rowLimit)) }
        open[id] = Open(token: token, phase: .starting, rowLimit: rowLimit, batchRows: batchRows)
        return [.run(id, sql: planned.sql, parameters: planned.parameters, timeout: timeout(request.timeoutMs),
                     batchRows: batchRows, token: token)]
    }

    /// A Batch arrived.
    mutating func batch(_ request: Switchyard_Dbagent_Batch, now: UInt64) -> [Action] {
        let id = request.requestID
        var refusal: [Action] = []
        guard let token = admit(id: id, token: request.token, now: now, refusal: &refusal) else { return refusal }
        guard !request.statements.isEmpty else {
            return refuse(id, .badRequest, "a batch needs statements", token: token)
        }
        guard request.statements.count <= limits.maxBatchStatements else {
            return refuse(id, .tooLarge, "a batch has at most \(limits.maxBatchStatements) statements", token: token)
        }
        var planned: [PlannedStatement] = []
        planned.reserveCapacity(request.statements.count)
        for (index, statement) in request.statements.enumerated() {
            switch plan(statement, token: token) {
            case .failure(let refusal):
                return refuse(id, refusal.kind, "statement \(index + 1): \(refusal.message)", token: token)
            case .success(let p): planned.append(p)
            }
        }
        if let busy = takeInFlight(id, token: token) { return busy }
        open[id] = Open(token: token, phase: .batch, rowLimit: nil, batchRows: 1)
        return [.runBatch(id, statements: planned, timeout: timeout(request.timeoutMs), token: token)]
    }

    /// A Hello arrived: the token is checked and the agent's dialect told.
    mutating func hello(_ request: Switchyard_Dbagent_Hello, now: UInt64) -> [Action] {
        var refusal: [Action] = []
        guard let token = admit(id: request.requestID, token: request.token, now: now, refusal: &refusal) else {
            return refusal
        }
        var welcome = Switchyard_Dbagent_Welcome()
        welcome.requestID = request.requestID
        welcome.dialect = dialect
        welcome.sqlAllowed = rules.tokens[token].allowsSQL
        welcome.maxFrameBody = UInt32(clamping: limits.maxFrameBodyLength)
        return [.send(.welcome(welcome), token: token)]
    }

    /// A Transaction arrived: checked as any request, then begun, committed or rolled back by the shell.
    mutating func transaction(_ request: Switchyard_Dbagent_Transaction, now: UInt64) -> [Action] {
        let id = request.requestID
        var refusal: [Action] = []
        guard let token = admit(id: id, token: request.token, now: now, refusal: &refusal) else { return refusal }
        switch request.action {
        case .begin, .commit, .rollback: break
        default: return refuse(id, .badRequest, "a transaction request needs BEGIN, COMMIT or ROLLBACK", token: token)
        }
        if let busy = takeInFlight(id, token: token) { return busy }
        open[id] = Open(token: token, phase: .batch, rowLimit: nil, batchRows: 1)
        let timeout = request.timeoutMs == 0 ? limits.maxTransactionTimeout
            : min(.milliseconds(Int64(request.timeoutMs)), limits.maxTransactionTimeout)
        return [.transaction(id, action: request.action, timeout: timeout, token: token)]
    }

    /// A Cancel arrived: the request ends now (an unknown id, or one that ended already, is ignored).
    mutating func cancel(_ id: UInt64) -> [Action] {
        guard let request = finish(id) else { return [] }
        return [.release(id), failure(Self.error(id, .cancelled, "cancelled by the caller"), token: request.token)]
    }

    /// A MoreRows arrived: one more chunk granted (kept up to `maxCredit`).
    mutating func moreRows(_ id: UInt64) -> [Action] {
        guard var request = open[id] else { return [] }
        switch request.phase {
        case .waitingCredit:
            request.phase = .fetching
            open[id] = request
            return [.fetch(id, maxRows: request.batchRows)]
        case .starting, .fetching:
            request.credit = min(request.credit + 1, limits.maxCredit)
            open[id] = request
            return []
        case .batch:
            return []
        }
    }

    // MARK: What the runner reports

    /// The statement ran; its columns and first batch.
    mutating func started(_ id: UInt64, columns: [ColumnInfo], batch: RowBatch, now: UInt64) -> [Action] {
        guard let request = open[id], case .starting = request.phase else { return [.release(id)] }
        var actions: [Action] = []
        if !columns.isEmpty {
            var message = Switchyard_Dbagent_Columns()
            message.requestID = id
            message.names = columns.map(\.name)
            message.types = columns.map(\.type.wire)
            actions.append(.send(.columns(message), token: request.token))
        }
        return actions + deliver(id, batch, now: now)
    }

    /// A later batch was read.
    mutating func batchReady(_ id: UInt64, _ batch: RowBatch, now: UInt64) -> [Action] {
        guard let request = open[id], case .fetching = request.phase else { return [.release(id)] }
        return deliver(id, batch, now: now)
    }

    /// The transaction batch committed.
    mutating func batchFinished(_ id: UInt64, _ outcome: BatchOutcome) -> [Action] {
        guard let request = finish(id) else { return [] }
        let done = Self.done(id, affectedRows: outcome.affectedRows, lastInsertID: outcome.lastInsertID)
        return [.release(id), .send(.done(done), token: request.token)]
    }

    /// The statement, a batch read or the transaction failed.
    mutating func failed(_ id: UInt64, _ error: any Error, now: UInt64) -> [Action] {
        guard let request = finish(id) else { return [.release(id)] }
        return [.release(id), failure(Self.error(id, for: error), token: request.token)]
    }

    /// A request's statement timeout passed: one still running (or its transaction) ends with `TIMEOUT`; one
    /// streaming rows already is not affected.
    mutating func timedOut(_ id: UInt64) -> [Action] {
        guard let request = open[id] else { return [] }
        switch request.phase {
        case .starting, .batch:
            _ = finish(id)
            return [.expire(id), failure(Self.error(id, .timeout, "the statement did not finish within its timeout"),
                                          token: request.token)]
        case .fetching, .waitingCredit:
            return []
        }
    }

    /// The time passed: requests whose caller granted no chunk within the credit timeout end.
    mutating func tick(now: UInt64) -> [Action] {
        guard let timeoutNs = limits.creditTimeoutNs else { return [] }
        var actions: [Action] = []
        for (id, request) in open {
            guard case .waitingCredit(let since) = request.phase, now > since, now - since >= timeoutNs else {
                continue
            }
            _ = finish(id)
            counters.creditTimeouts.add()
            actions.append(.release(id))
            actions.append(failure(Self.error(id, .timeout, "no MoreRows within the credit timeout"),
                               token: request.token))
        }
        return actions
    }

    /// The connection closed: every open request is released.
    mutating func closed() -> [Action] {
        closing = true
        return open.keys.sorted().compactMap { id in finish(id).map { _ in .release(id) } }
    }

    // MARK: Helpers

    /// Takes a slot of ``Limits/maxInFlight`` for request `id`; nil when taken, the busy refusal when none is free.
    private mutating func takeInFlight(_ id: UInt64, token: Int) -> [Action]? {
        if counters.inFlight.take(limit: limits.maxInFlight) { return nil }
        return refuse(id, .busy, "the agent has \(limits.maxInFlight) requests open", token: token)
    }

    /// Token, request id, open requests and rate: the checks every request passes first. The token's index, or
    /// nil with what refuses the request in `refusal`.
    private mutating func admit(id: UInt64, token presented: String, now: UInt64, refusal: inout [Action]) -> Int? {
        guard !closing else { return nil }
        guard let token = rules.tokenIndex(for: presented.utf8) else {
            authFailures += 1
            var actions: [Action] = [failure(Self.error(id, .unauthorized,
                                                        presented.isEmpty ? "no token" : "unknown token"), token: nil)]
            if authFailures == 1 {
                actions.append(.logUnauthorized(reason: presented.isEmpty ? "no token" : "unknown token"))
            }
            if authFailures >= limits.maxAuthFailures {
                closing = true
                actions.append(.close)
            }
            refusal = actions
            return nil
        }
        guard open[id] == nil else {
            refusal = refuse(id, .badRequest, "request id \(id) is in use on this connection", token: token)
            return nil
        }
        guard open.count < limits.maxOpen else {
            refusal = refuse(id, .busy, "\(limits.maxOpen) requests are open on this connection", token: token)
            return nil
        }
        counters.request(token)
        guard limiter.take(token, now: now) else {
            let rate = rules.tokens[token].rate ?? 0
            refusal = refuse(id, .rateLimited, "over the token's \(rate) requests a second", token: token)
            return nil
        }
        return token
    }

    private struct Refusal: Error {
        var kind: Switchyard_Dbagent_ErrorKind
        var message: String
    }

    /// The SQL and parameters of a statement, if the token may run it.
    private func plan(_ statement: Switchyard_Dbagent_Statement, token: Int) -> Result<PlannedStatement, Refusal> {
        let grant = rules.tokens[token]
        guard statement.parameters.count <= limits.maxParameters else {
            return .failure(Refusal(kind: .tooLarge, message: "at most \(limits.maxParameters) parameters"))
        }
        let parameters = statement.parameters.map(\.sqlValue)
        switch (statement.name.isEmpty, statement.sql.isEmpty) {
        case (false, false):
            return .failure(Refusal(kind: .badRequest, message: "a statement has a name or SQL, not both"))
        case (true, true):
            return .failure(Refusal(kind: .badRequest, message: "a statement needs a name or SQL"))
        case (false, true):
            guard let named = rules.statements[statement.name], grant.mayRun(statement.name) else {
                return .failure(Refusal(kind: .unknownStatement,
                                        message: "no statement '\(statement.name.prefix(128))' for this token"))
            }
            guard parameters.count == named.parameterCount else {
                return .failure(Refusal(kind: .badRequest, message:
                    "statement '\(named.name)' takes \(named.parameterCount) parameters, got \(parameters.count)"))
            }
            return .success(PlannedStatement(sql: named.sql, parameters: parameters))
        case (true, false):
            guard grant.allowsSQL else {
                return .failure(Refusal(kind: .sqlNotAllowed, message: "this token may not send SQL text"))
            }
            guard statement.sql.utf8.count <= limits.maxSQLBytes else {
                return .failure(Refusal(kind: .tooLarge, message: "SQL text over \(limits.maxSQLBytes) bytes"))
            }
            return .success(PlannedStatement(sql: statement.sql, parameters: parameters))
        }
    }

    private func timeout(_ milliseconds: UInt32) -> Duration {
        milliseconds == 0 ? limits.defaultTimeout : min(.milliseconds(Int64(milliseconds)), limits.maxTimeout)
    }

    /// Sends a batch's rows (within the row limit, in chunks under the frame bound), then Done or waits for a grant.
    private mutating func deliver(_ id: UInt64, _ batch: RowBatch, now: UInt64) -> [Action] {
        guard var request = open[id] else { return [.release(id)] }
        counters.rowsRead.add(batch.rows.count)
        var rows = batch.rows[...]
        var truncated = false
        if let limit = request.rowLimit {
            let remaining = max(0, limit - request.sent)
            if rows.count > remaining || (rows.count == remaining && !batch.isLast) {
                truncated = rows.count > remaining || !batch.isLast
                rows = rows.prefix(remaining)
            }
        }
        var actions: [Action] = []
        var chunk = Switchyard_Dbagent_Rows()
        chunk.requestID = id
        var chunkBytes = 16
        for values in rows {
            let bytes = Self.estimatedBytes(values)
            guard bytes <= limits.maxChunkBytes else {
                _ = finish(id)
                return actions + [.release(id), failure(Self.error(id, .tooLarge,
                    "a row of about \(bytes) bytes does not fit in a frame of \(limits.maxChunkBytes)"),
                    token: request.token)]
            }
            if chunkBytes + bytes > limits.maxChunkBytes {
                actions.append(.send(.rows(chunk), token: request.token))
                chunk.rows.removeAll(keepingCapacity: true)
                chunkBytes = 16
            }
            var row = Switchyard_Dbagent_Row()
            row.values = values.map(Switchyard_Dbagent_Value.init)
            chunk.rows.append(row)
            chunkBytes += bytes
        }
        let final = batch.isLast || truncated
        if !chunk.rows.isEmpty {
            chunk.last = final
            actions.append(.send(.rows(chunk), token: request.token))
        }
        request.sent += rows.count
        counters.rows(request.token, rows.count)
        if final {
            _ = finish(id)
            var done = Self.done(id, affectedRows: batch.affectedRows, lastInsertID: batch.lastInsertID)
            done.rowsSent = UInt64(request.sent)
            done.truncated = truncated
            actions.append(.release(id))
            actions.append(.send(.done(done), token: request.token))
            return actions
        }
        if request.credit > 0 {
            request.credit -= 1
            request.phase = .fetching
            actions.append(.fetch(id, maxRows: request.batchRows))
        } else {
            request.phase = .waitingCredit(since: now)
        }
        open[id] = request
        return actions
    }

    /// An upper bound of a row's encoded size: the values' payloads and at most 24 bytes of framing each.
    static func estimatedBytes(_ values: [SQLValue]) -> Int {
        var total = 8
        for value in values {
            switch value {
            case .text(let text): total += text.utf8.count + 24
            case .blob(let bytes): total += bytes.count + 24
            default: total += 24
            }
        }
        return total
    }

    /// Removes an open request (its in-flight slot freed); nil when it was not open.
    private mutating func finish(_ id: UInt64) -> Open? {
        guard let request = open.removeValue(forKey: id) else { return nil }
        counters.inFlight.release()
        return request
    }

    private func refuse(_ id: UInt64, _ kind: Switchyard_Dbagent_ErrorKind, _ message: String, token: Int?)
        -> [Action]
    {
        [failure(Self.error(id, kind, message), token: token)]
    }

    /// An error answer, counted.
    private func failure(_ error: Switchyard_Dbagent_Error, token: Int?) -> Action {
        counters.error(error.kind, token: token)
        return .send(.error(error), token: token)
    }

    /// The end of request `id`: what it changed.
    static func done(_ id: UInt64, affectedRows: Int64, lastInsertID: Int64?) -> Switchyard_Dbagent_Done {
        var done = Switchyard_Dbagent_Done()
        done.requestID = id
        done.affectedRows = affectedRows
        if let lastInsertID {
            done.hasLastInsertID_p = true
            done.lastInsertID = lastInsertID
        }
        return done
    }

    static func error(_ id: UInt64, _ kind: Switchyard_Dbagent_ErrorKind, _ message: String)
        -> Switchyard_Dbagent_Error
    {
        var error = Switchyard_Dbagent_Error()
        error.requestID = id
        error.kind = kind
        error.message = message
        return error
    }

    /// The answer for what the runner threw.
    static func error(_ id: UInt64, for failure: any Error) -> Switchyard_Dbagent_Error {
        switch failure {
        case RunnerError.timeout(let limit):
            return error(id, .timeout, "the statement did not finish within \(limit)")
        case RunnerError.cancelled, is CancellationError:
            return error(id, .cancelled, "cancelled")
        case let refusal as TransactionRefusal:
            return error(id, refusal.kind, refusal.message)
        case StorageError.timeout(let detail):
            return error(id, .busy, "no database connection free: \(detail.message)")
        case let storage as StorageError:
            var e = error(id, .database, storage.message)
            e.driverCode = storage.code ?? ""
            e.driver = storage.detail.driver ?? ""
            e.storageKind = storage.kind
            return e
        default:
            return error(id, .database, "\(failure)")
        }
    }
}
