/// One value in a row or one bound parameter.
///
/// The five cases are the storage classes common to SQLite, MySQL/MariaDB and PostgreSQL. Drivers map their
/// column types onto them: integer types (and booleans) to ``integer(_:)``, floating point to ``double(_:)``,
/// binary strings (`BLOB`, `BYTEA`, `VARBINARY`) to ``blob(_:)`` and everything else (text, decimals, dates)
/// to ``text(_:)`` in the server's text form.
///
/// Parameters are always bound, never spliced into the SQL text, so a value may hold anything:
///
///     try await pool.execute("INSERT INTO users (name, age) VALUES (?, ?)", ["O'Brien", 42])
public enum SQLValue: Sendable, Hashable {
    /// SQL `NULL`.
    case null
    /// A 64-bit signed integer.
    case integer(Int64)
    /// A double precision float.
    case double(Double)
    /// A UTF-8 string.
    case text(String)
    /// Raw bytes.
    case blob([UInt8])

    /// `true` for ``null``.
    public var isNull: Bool {
        if case .null = self { return true }
        return false
    }

    /// The integer, or a text value that parses as one; `nil` otherwise.
    public var int64: Int64? {
        switch self {
        case .integer(let value): return value
        case .double(let value): return value == value.rounded() ? Int64(exactly: value) : nil
        case .text(let text): return Int64(text)
        default: return nil
        }
    }

    /// The number as a double (integers are converted), or a text value that parses as one; `nil` otherwise.
    public var double: Double? {
        switch self {
        case .double(let value): return value
        case .integer(let value): return Double(value)
        case .text(let text): return Double(text)
        default: return nil
        }
    }

    /// The text; integers and doubles are not converted. `nil` for other cases.
    public var string: String? {
        if case .text(let text) = self { return text }
        return nil
    }

    /// The bytes of a blob, or the UTF-8 bytes of a text; `nil` otherwise.
    public var bytes: [UInt8]? {
        switch self {
        case .blob(let bytes): return bytes
        case .text(let text): return Array(text.utf8)
        default: return nil
        }
    }

    /// A short name of the case, for error messages.
    var kindName: String {
        switch self {
        case .null: return "NULL"
        case .integer: return "integer"
        case .double: return "double"
        case .text: return "text"
        case .blob: return "blob"
        }
    }
}

extension SQLValue: CustomStringConvertible {
    /// A readable form for logs and test output (blobs are shown by size only).
    public var description: String {
        switch self {
        case .null: return "NULL"
        case .integer(let value): return String(value)
        case .double(let value): return String(value)
        case .text(let text): return "'" + text + "'"
        case .blob(let bytes): return "<\(bytes.count) bytes>"
        }
    }
}

extension SQLValue: ExpressibleByNilLiteral {
    public init(nilLiteral: ()) { self = .null }
}

extension SQLValue: ExpressibleByIntegerLiteral {
    public init(integerLiteral value: Int64) { self = .integer(value) }
}

extension SQLValue: ExpressibleByFloatLiteral {
    public init(floatLiteral value: Double) { self = .double(value) }
}

extension SQLValue: ExpressibleByStringLiteral {
    public init(stringLiteral value: String) { self = .text(value) }
}

extension SQLValue: ExpressibleByBooleanLiteral {
    /// Booleans are stored as the integers 1 and 0 (use an integer column on every database).
    public init(booleanLiteral value: Bool) { self = .integer(value ? 1 : 0) }
}

/// A Swift type that converts to and from ``SQLValue``: used for parameters (`SQLValue(x)`) and for typed
/// column access (`try row.decode("name", as: String.self)`).
public protocol SQLValueConvertible: Sendable {
    /// The value to bind.
    var sqlValue: SQLValue { get }
    /// Converts a column value; `nil` when it does not fit this type.
    init?(sqlValue: SQLValue)
}

extension SQLValue {
    /// Wraps a convertible Swift value.
    public init(_ value: some SQLValueConvertible) { self = value.sqlValue }
}

extension SQLValue: SQLValueConvertible {
    public var sqlValue: SQLValue { self }
    public init?(sqlValue: SQLValue) { self = sqlValue }
}

extension Int64: SQLValueConvertible {
    public var sqlValue: SQLValue { .integer(self) }
    public init?(sqlValue: SQLValue) {
        guard let value = sqlValue.int64 else { return nil }
        self = value
    }
}

extension Int: SQLValueConvertible {
    public var sqlValue: SQLValue { .integer(Int64(self)) }
    public init?(sqlValue: SQLValue) {
        guard let value = sqlValue.int64, let fitting = Int(exactly: value) else { return nil }
        self = fitting
    }
}

extension Int32: SQLValueConvertible {
    public var sqlValue: SQLValue { .integer(Int64(self)) }
    public init?(sqlValue: SQLValue) {
        guard let value = sqlValue.int64, let fitting = Int32(exactly: value) else { return nil }
        self = fitting
    }
}

extension UInt32: SQLValueConvertible {
    public var sqlValue: SQLValue { .integer(Int64(self)) }
    public init?(sqlValue: SQLValue) {
        guard let value = sqlValue.int64, let fitting = UInt32(exactly: value) else { return nil }
        self = fitting
    }
}

extension Double: SQLValueConvertible {
    public var sqlValue: SQLValue { .double(self) }
    public init?(sqlValue: SQLValue) {
        guard let value = sqlValue.double else { return nil }
        self = value
    }
}

extension String: SQLValueConvertible {
    public var sqlValue: SQLValue { .text(self) }
    public init?(sqlValue: SQLValue) {
        switch sqlValue {
        case .text(let text): self = text
        case .integer(let value): self = String(value)
        case .double(let value): self = String(value)
        case .blob(let bytes): self = String(decoding: bytes, as: UTF8.self)
        case .null: return nil
        }
    }
}

extension Bool: SQLValueConvertible {
    public var sqlValue: SQLValue { .integer(self ? 1 : 0) }
    public init?(sqlValue: SQLValue) {
        switch sqlValue {
        case .integer(let value): self = value != 0
        case .text(let text):
            switch text.lowercased() {
            case "1", "t", "true", "y", "yes", "on": self = true
            case "0", "f", "false", "n", "no", "off": self = false
            default: return nil
            }
        default: return nil
        }
    }
}

extension Array: SQLValueConvertible where Element == UInt8 {
    public var sqlValue: SQLValue { .blob(self) }
    public init?(sqlValue: SQLValue) {
        guard let bytes = sqlValue.bytes else { return nil }
        self = bytes
    }
}

extension Optional: SQLValueConvertible where Wrapped: SQLValueConvertible {
    public var sqlValue: SQLValue { self.map(\.sqlValue) ?? .null }
    public init?(sqlValue: SQLValue) {
        if case .null = sqlValue {
            self = .none
            return
        }
        guard let value = Wrapped(sqlValue: sqlValue) else { return nil }
        self = .some(value)
    }
}
