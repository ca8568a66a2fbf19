import DatabaseAgentProtocol
import LarsWire
import Synchronization

/// The `agent://HOST:PORT?token=T` driver: every statement goes to the database agent (`switchyard db-agent`) over
/// its frames, so a service needs no database library of its own.
///
///     pool connection --- one TCP connection ---> agent --- its own pool ---> SQLite / MariaDB / PostgreSQL
///
/// - Connect: Hello with the token; a refused token is ``StorageError/authenticationFailed(_:)`` with the agent's
///   reason, as is a token without the `sql` right (the driver sends SQL text).
/// - Dialect: the URL's `dialect=` option, else learned from the agent (one Hello when the pool is created); every
///   connect checks the agent still serves that dialect.
/// - Statements: Execute with the SQL text and its `?` parameters; whole results are collected granting every chunk.
///   A result cut by the token's row limit is an error, never a silent truncation.
/// - Streams: the agent's chunks are read one at a time as `fetch` asks (MoreRows only when the rows held are used
///   up), so memory stays at about one chunk.
/// - Transactions: `BEGIN`/`START TRANSACTION`, `COMMIT`/`END` and `ROLLBACK` become the agent's Transaction request,
///   which pins one of the agent's pooled connections to this connection until COMMIT or ROLLBACK (rolled back if
///   this connection drops): the statements between run inside one database transaction.
/// - Timeouts: the canceller sends Cancel for the running request (the agent answers at once and ends the
///   statement); the agent also applies its own statement timeout to every request. Options `timeout_ms` (sent
///   with every request; 0: the agent's default), `read_timeout_ms` (longest wait for an answer frame, default
///   330 s), `batch_rows` (rows per chunk of a stream, default 500), `connect_timeout` (seconds, for the dialect
///   handshake at pool creation; default 5).
final class AgentConnector: DriverConnector {
    let dialect: SQLDialect
    let settings: AgentSettings

    init(url: DatabaseURL) throws {
        func option(_ name: String, _ fallback: Int) throws -> Int {
            guard let text = url.options[name] else { return fallback }
            guard let value = Int(text), value >= 0 else {
                throw StorageError.badURL(.init("\(url): option \(name) must be a number >= 0, got '\(text)'"))
            }
            return value
        }
        settings = AgentSettings(
            host: url.host, port: url.port, token: url.options["token"] ?? "",
            statementTimeoutMs: UInt32(clamping: try option("timeout_ms", 0)),
            readTimeout: .milliseconds(max(1, try option("read_timeout_ms", 330_000))),
            batchRows: UInt32(clamping: max(1, try option("batch_rows", 500))),
            expectedDialect: url.options["dialect"].flatMap(SQLDialect.init(rawValue:)))
        if let known = settings.expectedDialect {
            dialect = known
        } else {
            let seconds = try option("connect_timeout", 5)
            let connection = try AgentDriverConnection.open(settings, timeout: .seconds(max(1, seconds)))
            dialect = connection.dialect
            connection.close()
        }
    }

    func connect(timeout: Duration) throws -> DriverConnection {
        let connection = try AgentDriverConnection.open(settings, timeout: timeout)
        guard connection.dialect == dialect else {
            connection.close()
            throw StorageError.connectionFailed(.init(
                "the database agent at \(settings.host):\(settings.port) serves \(connection.dialect.rawValue), "
                    + "this pool was made for \(dialect.rawValue)", driver: "agent"))
        }
        return connection
    }

    func shutdown() {}
}

/// What every connection of an agent:// connector uses.
struct AgentSettings: Sendable {
    var host: String
    var port: Int
    var token: String
    var statementTimeoutMs: UInt32
    var readTimeout: Duration
    var batchRows: UInt32
    var expectedDialect: SQLDialect?
}

/// One driver connection to the agent. Worker thread only (its canceller excepted).
final class AgentDriverConnection: DriverConnection {
    let socket: AgentSocket
    let settings: AgentSettings
    let dialect: SQLDialect
    /// The request running now (0: none), for the canceller.
    let running: AgentRunning
    private var nextID: UInt64 = 1
    private var closed = false
    /// The timeout of the statement about to start (``willStart(timeout:)``), sent with it.
    private var nextTimeout: Duration?

    private init(socket: AgentSocket, settings: AgentSettings, dialect: SQLDialect) {
        self.socket = socket
        self.settings = settings
        self.dialect = dialect
        self.running = AgentRunning(socket: socket)
    }

    /// Connects and says Hello. Throws connectionFailed, authenticationFailed.
    static func open(_ settings: AgentSettings, timeout: Duration) throws -> AgentDriverConnection {
        let socket = try AgentSocket(host: settings.host, port: settings.port, timeout: timeout,
                                     readTimeout: settings.readTimeout, maxBodyLength: FrameParser.defaultMaxBodyLength)
        var hello = Switchyard_Dbagent_Hello()
        hello.requestID = 1
        hello.token = settings.token
        let welcome: Switchyard_Dbagent_Welcome
        do {
            try socket.send(hello, .hello)
            let frame = try socket.receive()
            switch frame.id {
            case DatabaseAgentMessageID.welcome.rawValue:
                welcome = try Switchyard_Dbagent_Welcome(serializedBytes: frame.body)
            case DatabaseAgentMessageID.error.rawValue:
                let error = try Switchyard_Dbagent_Error(serializedBytes: frame.body)
                if error.kind == .unauthorized {
                    throw StorageError.authenticationFailed(.init(
                        "the database agent refused the token: \(error.message)", code: "UNAUTHORIZED",
                        driver: "agent"))
                }
                throw AgentDriverConnection.storageError(error)
            default:
                throw StorageError.connectionFailed(.init(
                    "the database agent answered Hello with frame \(frame.id)", driver: "agent"))
            }
        } catch let error as StorageError {
            socket.shutdown()
            if case .connectionLost(let detail) = error { throw StorageError.connectionFailed(detail) }
            throw error
        } catch {
            socket.shutdown()
            throw StorageError.connectionFailed(.init("bad Hello answer from the database agent: \(error)",
                                                      driver: "agent"))
        }
        guard welcome.sqlAllowed else {
            socket.shutdown()
            throw StorageError.authenticationFailed(.init(
                "the database agent's token may not send SQL text (the agent:// driver needs a token with `sql`)",
                code: "SQL_NOT_ALLOWED", driver: "agent"))
        }
        guard let dialect = SQLDialect(rawValue: welcome.dialect) else {
            socket.shutdown()
            throw StorageError.connectionFailed(.init(
                "the database agent serves an unknown dialect '\(welcome.dialect)'", driver: "agent"))
        }
        let connection = AgentDriverConnection(socket: socket, settings: settings, dialect: dialect)
        connection.nextID = 2
        return connection
    }

    // MARK: DriverConnection

    func execute(_ sql: String, _ parameters: [SQLValue]) throws -> SQLResult {
        if let action = Self.transactionAction(sql) {
            try transaction(action)
            return SQLResult()
        }
        let id = try startExecute(sql, parameters)
        defer { running.end() }
        var columns = SQLColumns([])
        var rows: [SQLRow] = []
        while true {
            switch try nextAnswer(id) {
            case .columns(let c):
                columns = c
            case .rows(let values, let last):
                rows.reserveCapacity(rows.count + values.count)
                for row in values { rows.append(try Self.row(row, columns)) }
                if !last { try grant(id) }
            case .done(let done):
                if done.truncated {
                    throw StorageError.other(.init(
                        "the database agent cut the result at \(done.rowsSent) rows (the token's row limit)",
                        code: "TRUNCATED", driver: "agent"))
                }
                return SQLResult(columns: columns, rows: rows, affectedRows: done.affectedRows,
                                 lastInsertID: done.hasLastInsertID_p ? done.lastInsertID : nil)
            }
        }
    }

    func stream(_ sql: String, _ parameters: [SQLValue]) throws -> DriverStream {
        let id = try startExecute(sql, parameters)
        let stream = AgentStream(connection: self, id: id)
        do {
            try stream.start()
        } catch {
            running.end()
            throw error
        }
        return stream
    }

    func willStart(timeout: Duration?) { nextTimeout = timeout }

    /// The agent times the statement out itself and answers TIMEOUT: the local Cancel waits this much longer, so it
    /// is the fallback for an agent that does not answer rather than a race with the agent's own timer.
    var timeoutGrace: Duration { .milliseconds(300) }

    func ping() -> Bool {
        (try? execute("SELECT 1", [])) != nil
    }

    func makeCanceller() -> (any DriverCanceller)? { running }

    func close() {
        guard !closed else { return }
        closed = true
        socket.shutdown()
    }

    // MARK: Requests

    /// The transaction statements the driver turns into the agent's Transaction request.
    static func transactionAction(_ sql: String) -> Switchyard_Dbagent_TransactionAction? {
        var text = sql.uppercased().split(whereSeparator: { $0.isWhitespace }).joined(separator: " ")
        while text.hasSuffix(";") || text.hasSuffix(" ") { text.removeLast() }
        switch text {
        case "BEGIN", "BEGIN TRANSACTION", "BEGIN WORK", "BEGIN IMMEDIATE", "BEGIN IMMEDIATE TRANSACTION",
             "BEGIN DEFERRED", "BEGIN DEFERRED TRANSACTION", "BEGIN EXCLUSIVE", "BEGIN EXCLUSIVE TRANSACTION",
             "START TRANSACTION":
            return .begin
        case "COMMIT", "COMMIT TRANSACTION", "COMMIT WORK", "END", "END TRANSACTION":
            return .commit
        case "ROLLBACK", "ROLLBACK TRANSACTION", "ROLLBACK WORK":
            return .rollback
        default:
            return nil
        }
    }

    private func transaction(_ action: Switchyard_Dbagent_TransactionAction) throws {
        let id = takeID()
        var request = Switchyard_Dbagent_Transaction()
        request.requestID = id
        request.token = settings.token
        request.action = action
        running.begin(id)
        defer { running.end() }
        try socket.send(request, .transaction)
        while true {
            if case .done = try nextAnswer(id) { return }
        }
    }

    private func takeID() -> UInt64 {
        defer { nextID += 1 }
        return nextID
    }

    /// Sends an Execute; the request is the running one until ``AgentRunning/end()``.
    func startExecute(_ sql: String, _ parameters: [SQLValue]) throws -> UInt64 {
        guard !closed else { throw StorageError.connectionLost(.init("the connection is closed", driver: "agent")) }
        let id = takeID()
        var request = Switchyard_Dbagent_Execute()
        request.requestID = id
        request.token = settings.token
        request.statement.sql = sql
        request.statement.parameters = parameters.map(Switchyard_Dbagent_Value.init)
        // The caller's timeout goes to the agent, which then cancels in its database at the same time as the
        // canceller's Cancel ends the request here.
        request.timeoutMs = nextTimeout.map { UInt32(clamping: max(1, $0.millisecondsRoundedUp)) }
            ?? settings.statementTimeoutMs
        nextTimeout = nil
        request.batchRows = settings.batchRows
        running.begin(id)
        do {
            try socket.send(request, .execute)
        } catch {
            running.end()
            throw error
        }
        return id
    }

    /// Grants the next chunk of a request.
    func grant(_ id: UInt64) throws {
        var more = Switchyard_Dbagent_MoreRows()
        more.requestID = id
        try socket.send(more, .moreRows)
    }

    /// Tells the agent to end a request whose answers this connection no longer wants (they are skipped).
    func abandon(_ id: UInt64) {
        var cancel = Switchyard_Dbagent_Cancel()
        cancel.requestID = id
        try? socket.send(cancel, .cancel)
    }

    enum Answer {
        case columns(SQLColumns)
        case rows([Switchyard_Dbagent_Row], last: Bool)
        case done(Switchyard_Dbagent_Done)
    }

    /// The next answer frame of request `id` (those of earlier, abandoned requests are skipped). An Error of the
    /// request is thrown as its ``StorageError``; a broken connection as connectionLost.
    func nextAnswer(_ id: UInt64) throws -> Answer {
        while true {
            let frame = try socket.receive()
            do {
                switch frame.id {
                case DatabaseAgentMessageID.columns.rawValue:
                    let m = try Switchyard_Dbagent_Columns(serializedBytes: frame.body)
                    guard m.requestID == id else { continue }
                    let types = m.names.indices.map { $0 < m.types.count ? SQLColumnType(m.types[$0]) : .unknown }
                    return .columns(SQLColumns(m.names, types: types))
                case DatabaseAgentMessageID.rows.rawValue:
                    let m = try Switchyard_Dbagent_Rows(serializedBytes: frame.body)
                    guard m.requestID == id else { continue }
                    return .rows(m.rows, last: m.last)
                case DatabaseAgentMessageID.done.rawValue:
                    let m = try Switchyard_Dbagent_Done(serializedBytes: frame.body)
                    guard m.requestID == id else { continue }
                    return .done(m)
                case DatabaseAgentMessageID.error.rawValue:
                    let m = try Switchyard_Dbagent_Error(serializedBytes: frame.body)
                    guard m.requestID == id else { continue }
                    throw Self.storageError(m)
                default:
                    continue
                }
            } catch let error as StorageError {
                throw error
            } catch {
                socket.shutdown()
                throw StorageError.connectionLost(.init("undecodable answer from the database agent: \(error)",
                                                        driver: "agent"))
            }
        }
    }

    static func row(_ row: Switchyard_Dbagent_Row, _ columns: SQLColumns) throws -> SQLRow {
        guard row.values.count == columns.count else {
            throw StorageError.other(.init(
                "the agent sent a row of \(row.values.count) values for \(columns.count) columns", driver: "agent"))
        }
        return SQLRow(columns: columns, values: row.values.map(\.sqlValue))
    }

    /// The StorageError for an agent's Error: the database's own error case (with its driver and code) for DATABASE,
    /// a statement timeout for TIMEOUT, and `other` with the agent's kind as code for the agent's refusals.
    static func storageError(_ error: Switchyard_Dbagent_Error) -> StorageError {
        switch error.kind {
        case .database:
            let detail = StorageError.Detail(error.message, code: error.driverCode.isEmpty ? nil : error.driverCode,
                                             driver: error.driver.isEmpty ? nil : error.driver)
            switch error.storageKind {
            case "connectionFailed", "connectionLost":
                // The agent's database connection broke: this connection to the agent is fine.
                return .other(detail)
            case "authenticationFailed": return .other(detail)
            case "constraintViolation": return .constraintViolation(detail)
            case "syntax": return .syntax(detail)
            case "timeout": return .timeout(detail)
            case "typeMismatch": return .typeMismatch(detail)
            case "valueRejected": return .valueRejected(detail)
            default: return .other(detail)
            }
        case .timeout:
            return .timeout(.init("database agent: \(error.message)", code: "statement_timeout", driver: "agent"))
        case .unauthorized:
            return .authenticationFailed(.init("the database agent refused the token: \(error.message)",
                                               code: "UNAUTHORIZED", driver: "agent"))
        case .busy:
            return .timeout(.init("database agent busy: \(error.message)", code: "BUSY", driver: "agent"))
        default:
            return .other(.init("database agent: \(error.message)", code: "\(error.kind)".uppercased(),
                                driver: "agent"))
        }
    }
}

/// The request an agent connection is running, and the canceller that ends it from another thread.
final class AgentRunning: DriverCanceller {
    private let socket: AgentSocket
    private let current = Atomic<UInt64>(0)

    init(socket: AgentSocket) { self.socket = socket }

    func begin(_ id: UInt64) { current.store(id, ordering: .releasing) }
    func end() { current.store(0, ordering: .releasing) }

    /// Sends Cancel for the running request: the agent answers it at once and ends its statement.
    func cancel() -> Bool {
        let id = current.load(ordering: .acquiring)
        guard id != 0 else { return true }
        var cancel = Switchyard_Dbagent_Cancel()
        cancel.requestID = id
        do {
            try socket.send(cancel, .cancel)
            return true
        } catch {
            return false
        }
    }

    func abort() { socket.shutdown() }
}

/// The rows of one Execute, read from the agent chunk by chunk as `fetch` asks. Worker thread only.
final class AgentStream: DriverStream {
    private let connection: AgentDriverConnection
    private let id: UInt64
    private(set) var columns = SQLColumns([])
    private(set) var rowsFetched = 0
    private(set) var affectedRows: Int64 = 0
    private(set) var isFinished = false
    /// Rows received and not handed out yet (at most one chunk).
    private var held: [Switchyard_Dbagent_Row] = []
    private var heldIndex = 0
    /// The last chunk received was not the last: the agent waits for a grant.
    private var owesGrant = false

    init(connection: AgentDriverConnection, id: UInt64) {
        self.connection = connection
        self.id = id
    }

    /// Reads up to the columns (or the end of a statement with no rows).
    func start() throws {
        do {
            switch try connection.nextAnswer(id) {
            case .columns(let c):
                columns = c
            case .rows(let rows, let last):
                take(rows, last: last)
            case .done(let done):
                self.done = done
                if !done.truncated {
                    isFinished = true
                    connection.running.end()
                }
            }
        } catch {
            isFinished = true
            throw error
        }
    }

    func fetch(_ limit: Int) throws -> [SQLRow] {
        var result: [SQLRow] = []
        do {
            while result.count < limit && !isFinished {
                if heldIndex < held.count {
                    let end = min(held.count, heldIndex + (limit - result.count))
                    for row in held[heldIndex..<end] { result.append(try AgentDriverConnection.row(row, columns)) }
                    heldIndex = end
                    continue
                }
                if let done {
                    isFinished = true
                    connection.running.end()
                    if done.truncated {
                        throw StorageError.other(.init(
                            "the database agent cut the result at \(done.rowsSent) rows (the token's row limit)",
                            code: "TRUNCATED", driver: "agent"))
                    }
                    break
                }
                if owesGrant {
                    owesGrant = false
                    try connection.grant(id)
                }
                switch try connection.nextAnswer(id) {
                case .columns(let c): columns = c
                case .rows(let rows, let last): take(rows, last: last)
                case .done(let done): self.done = done
                }
            }
        } catch {
            isFinished = true
            connection.running.end()
            rowsFetched += result.count
            throw error
        }
        rowsFetched += result.count
        return result
    }

    private func take(_ rows: [Switchyard_Dbagent_Row], last: Bool) {
        held = rows
        heldIndex = 0
        owesGrant = !last
    }

    /// The request's Done, once received (rows held may still wait to be handed out).
    private var done: Switchyard_Dbagent_Done? {
        didSet { affectedRows = done?.affectedRows ?? 0 }
    }

    func close() {
        if done == nil {
            connection.abandon(id)
        }
        isFinished = true
        held = []
        connection.running.end()
    }
}
