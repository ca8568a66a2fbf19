import Storage
import SwiftProtobuf

/// One statement a caller asks the agent to run: a name of the access file or SQL text, with its parameters.
public struct AgentStatement: Sendable, Hashable {
    /// The statement name (empty when ``sql`` is set).
    public var name: String
    /// SQL text with `?` placeholders (empty when ``name`` is set); only for tokens with `sql`.
    public var sql: String
    public var parameters: [SQLValue]

    /// A named statement of the access file.
    public static func named(_ name: String, _ parameters: [SQLValue] = []) -> AgentStatement {
        AgentStatement(name: name, sql: "", parameters: parameters)
    }

    /// SQL text (the token needs `sql`).
    public static func sql(_ sql: String, _ parameters: [SQLValue] = []) -> AgentStatement {
        AgentStatement(name: "", sql: sql, parameters: parameters)
    }

    var wire: Switchyard_Dbagent_Statement {
        var statement = Switchyard_Dbagent_Statement()
        statement.name = name
        statement.sql = sql
        statement.parameters = parameters.map(Switchyard_Dbagent_Value.init)
        return statement
    }
}

/// What a statement returned through the agent.
public struct AgentResult: Sendable, Hashable {
    public var columns: [ColumnInfo] = []
    public var rows: [[SQLValue]] = []
    /// Rows the statement inserted, updated or deleted (a batch: all its statements).
    public var affectedRows: Int64 = 0
    /// The driver's last insert id, when it has one (SQLite, MySQL).
    public var lastInsertID: Int64?
    /// The row limit (the request's or the token's) cut the result.
    public var truncated = false
}

/// A request the agent refused or that failed, or a connection that broke.
public struct DatabaseAgentClientError: Error, Sendable, Equatable, CustomStringConvertible {
    public enum Kind: String, Sendable, Equatable {
        case unauthorized, unknownStatement, sqlNotAllowed, rateLimited, timeout, database, badRequest, tooLarge,
            busy, cancelled
        /// The connection closed before the answer came (or could not be made).
        case connectionClosed
        /// The agent sent something this client does not understand.
        case protocolError
    }

    public var kind: Kind
    public var message: String
    /// `database`: the driver's code (SQLite extended code, MySQL errno, SQLSTATE); empty otherwise.
    public var driverCode: String = ""
    /// `database`: the driver ("sqlite", "mysql", "postgres").
    public var driver: String = ""
    /// `database`: Storage's case of the error ("constraintViolation", "syntax", ...).
    public var storageKind: String = ""

    public init(kind: Kind, message: String, driverCode: String = "", driver: String = "", storageKind: String = "") {
        self.kind = kind
        self.message = message
        self.driverCode = driverCode
        self.driver = driver
        self.storageKind = storageKind
    }

    init(_ wire: Switchyard_Dbagent_Error) {
        let kind: Kind
        switch wire.kind {
        case .unauthorized: kind = .unauthorized
        case .unknownStatement: kind = .unknownStatement
        case .sqlNotAllowed: kind = .sqlNotAllowed
        case .rateLimited: kind = .rateLimited
        case .timeout: kind = .timeout
        case .database: kind = .database
        case .badRequest: kind = .badRequest
        case .tooLarge: kind = .tooLarge
        case .busy: kind = .busy
        case .cancelled: kind = .cancelled
        default: kind = .protocolError
        }
        self.init(kind: kind, message: wire.message, driverCode: wire.driverCode, driver: wire.driver,
                  storageKind: wire.storageKind)
    }

    public var description: String {
        var text = "\(kind.rawValue): \(message)"
        if !driverCode.isEmpty { text += " [\(driver.isEmpty ? "" : driver + " ")\(driverCode)]" }
        return text
    }
}

/// Folds the answers of one request into its result; shared by the async and the blocking client.
struct ResultAssembler {
    enum Step {
        /// The columns came; keep reading.
        case columns
        /// A Rows chunk came; keep reading (grant the next chunk with MoreRows when `grant`: not after the last).
        case rows(grant: Bool)
        case finished(AgentResult)
        case failed(DatabaseAgentClientError)
    }

    private(set) var result = AgentResult()

    /// Takes one frame of the request; a frame of another id is a protocol error.
    mutating func take(messageID: Int32, body: [UInt8]) -> Step {
        do {
            switch messageID {
            case DatabaseAgentMessageID.columns.rawValue:
                let columns = try Switchyard_Dbagent_Columns(serializedBytes: body)
                result.columns = columns.names.enumerated().map { index, name in
                    let type = index < columns.types.count ? ColumnType(columns.types[index]) : .unknown
                    return ColumnInfo(name: name, type: type)
                }
                return .columns
            case DatabaseAgentMessageID.rows.rawValue:
                let rows = try Switchyard_Dbagent_Rows(serializedBytes: body)
                result.rows.append(contentsOf: rows.rows.map { $0.values.map(\.sqlValue) })
                return .rows(grant: !rows.last)
            case DatabaseAgentMessageID.done.rawValue:
                let done = try Switchyard_Dbagent_Done(serializedBytes: body)
                result.affectedRows = done.affectedRows
                result.lastInsertID = done.hasLastInsertID_p ? done.lastInsertID : nil
                result.truncated = done.truncated
                return .finished(result)
            case DatabaseAgentMessageID.error.rawValue:
                return .failed(DatabaseAgentClientError(try Switchyard_Dbagent_Error(serializedBytes: body)))
            default:
                return .failed(.init(kind: .protocolError, message: "unexpected message id \(messageID)"))
            }
        } catch {
            return .failed(.init(kind: .protocolError, message: "bad body of message \(messageID): \(error)"))
        }
    }

    /// The request id of an answer frame: field 1, which the agent's encoder writes first (0 when absent).
    static func requestID(body: [UInt8]) -> UInt64 {
        guard body.first == 0x08 else { return 0 }
        var value: UInt64 = 0
        var shift: UInt64 = 0
        for byte in body.dropFirst().prefix(10) {
            value |= UInt64(byte & 0x7F) << shift
            if byte & 0x80 == 0 { return value }
            shift += 7
        }
        return 0
    }
}

extension AgentResult {
    /// Request messages of the clients.
    static func executeMessage(id: UInt64, token: String, statement: AgentStatement, rowLimit: Int,
                               timeout: Duration?, batchRows: Int) -> Switchyard_Dbagent_Execute {
        var request = Switchyard_Dbagent_Execute()
        request.requestID = id
        request.token = token
        request.statement = statement.wire
        request.rowLimit = UInt32(clamping: max(0, rowLimit))
        request.timeoutMs = timeout.map { UInt32(clamping: max(1, $0.components.seconds * 1000
            + $0.components.attoseconds / 1_000_000_000_000_000)) } ?? 0
        request.batchRows = UInt32(clamping: max(0, batchRows))
        return request
    }

    static func batchMessage(id: UInt64, token: String, statements: [AgentStatement], timeout: Duration?)
        -> Switchyard_Dbagent_Batch
    {
        var request = Switchyard_Dbagent_Batch()
        request.requestID = id
        request.token = token
        request.statements = statements.map(\.wire)
        request.timeoutMs = timeout.map { UInt32(clamping: max(1, $0.components.seconds * 1000
            + $0.components.attoseconds / 1_000_000_000_000_000)) } ?? 0
        return request
    }
}
