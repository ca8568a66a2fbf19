/// The errors of the Storage library.
///
/// Every case carries a ``StorageError/Detail``: the driver's own message and, where the driver has one, its
/// code (SQLite extended result code, MySQL error number, PostgreSQL SQLSTATE). Match on the case to decide what
/// to do; log the detail.
///
///     do { try await pool.execute("INSERT INTO users (name) VALUES (?)", [name]) }
///     catch StorageError.constraintViolation(let detail) { reply("name taken: \(detail.message)") }
public enum StorageError: Error, Sendable, Equatable {
    /// A new connection could not be made (server down, refused, unknown host or database), or the pool is
    /// backing off after such a failure and fails fast until the next attempt.
    case connectionFailed(Detail)
    /// The connection broke while in use (server restarted, network error). The pool drops the connection;
    /// the statement may or may not have been applied.
    case connectionLost(Detail)
    /// The server refused the user name or password.
    case authenticationFailed(Detail)
    /// A unique, primary key, foreign key, not-null or check constraint rejected the statement.
    case constraintViolation(Detail)
    /// The statement is not valid SQL for this database, or names a table or column that does not exist.
    case syntax(Detail)
    /// No connection became free within the pool's acquire timeout, or a statement ran longer than its timeout
    /// and was cancelled on the server (``isStatementTimeout``; code `statement_timeout`; the connection stays
    /// usable). A driver's own interruption (PostgreSQL 57014, MySQL 1317/1969/3024, SQLite interrupt) maps here too.
    case timeout(Detail)
    /// The database URL cannot be parsed, or names a driver this build does not include.
    case badURL(Detail)
    /// The pool was closed.
    case poolClosed(Detail)
    /// A column value does not convert to the requested Swift type, or a named column does not exist.
    case typeMismatch(Detail)
    /// The database refused a value for its column: out of the column's range (a negative number in an unsigned
    /// column), too long, or not a value of the column's type (MySQL/MariaDB in strict mode, PostgreSQL's data
    /// exceptions). Nothing of the statement was applied.
    case valueRejected(Detail)
    /// Anything else the driver reports (locks, deadlocks, data too long, ...).
    case other(Detail)

    /// What the driver said.
    public struct Detail: Sendable, Equatable, CustomStringConvertible {
        /// The driver's message, or the library's own explanation.
        public var message: String
        /// The driver's code: SQLite extended result code, MySQL error number or PostgreSQL SQLSTATE.
        public var code: String?
        /// The driver that reported it, when one did ("sqlite", "mysql", "postgres").
        public var driver: String?

        /// Creates a detail.
        public init(_ message: String, code: String? = nil, driver: String? = nil) {
            self.message = message
            self.code = code
            self.driver = driver
        }

        public var description: String {
            var text = message
            if let code { text += " [\(driver.map { $0 + " " } ?? "")\(code)]" }
            return text
        }
    }

    /// The detail of any case.
    public var detail: Detail {
        switch self {
        case .connectionFailed(let d), .connectionLost(let d), .authenticationFailed(let d),
            .constraintViolation(let d), .syntax(let d), .timeout(let d), .badURL(let d), .poolClosed(let d),
            .typeMismatch(let d), .valueRejected(let d), .other(let d):
            return d
        }
    }

    /// The driver's message.
    public var message: String { detail.message }

    /// The driver's code, if any.
    public var code: String? { detail.code }

    /// The case name, e.g. `"constraintViolation"`.
    public var kind: String {
        switch self {
        case .connectionFailed: return "connectionFailed"
        case .connectionLost: return "connectionLost"
        case .authenticationFailed: return "authenticationFailed"
        case .constraintViolation: return "constraintViolation"
        case .syntax: return "syntax"
        case .timeout: return "timeout"
        case .badURL: return "badURL"
        case .poolClosed: return "poolClosed"
        case .typeMismatch: return "typeMismatch"
        case .valueRejected: return "valueRejected"
        case .other: return "other"
        }
    }

    /// `true` when the statement failed because of the values it carried (a constraint, a value its column refuses,
    /// or an error the library does not classify), not because of the connection, the pool or the SQL: the same
    /// statement with other values may succeed, so a batch can be retried row by row.
    public var isAboutTheValues: Bool {
        switch self {
        case .constraintViolation, .valueRejected, .typeMismatch, .other: return true
        case .connectionFailed, .connectionLost, .authenticationFailed, .syntax, .timeout, .badURL, .poolClosed:
            return false
        }
    }

    /// `true` when the connection that produced this error must not be used again.
    public var breaksConnection: Bool {
        switch self {
        case .connectionLost, .connectionFailed, .authenticationFailed: return true
        default: return false
        }
    }
}

extension StorageError: CustomStringConvertible {
    public var description: String { "\(kind): \(detail)" }
}
