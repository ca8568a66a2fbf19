/// One row of a result: values by position or by column name.
///
///     let row = try await pool.query("SELECT id, name FROM users WHERE id = ?", [7]).rows[0]
///     let id: Int64 = try row.decode("id")
///     let name = try row.decode("name", as: String?.self)
public struct SQLRow: Sendable, Hashable {
    /// The column names of the result (shared by all its rows).
    public let columns: SQLColumns
    /// The values, one per column.
    public let values: [SQLValue]

    /// Creates a row; `values` must have one value per column.
    public init(columns: SQLColumns, values: [SQLValue]) {
        precondition(columns.count == values.count, "a row needs one value per column")
        self.columns = columns
        self.values = values
    }

    /// The value at a position.
    public subscript(index: Int) -> SQLValue { values[index] }

    /// The value of the first column with this name (case-sensitive, then case-insensitive); `nil` when no
    /// column has it.
    public subscript(name: String) -> SQLValue? {
        columns.index(of: name).map { values[$0] }
    }

    /// The value of a named column converted to `T`. Throws ``StorageError/typeMismatch(_:)`` when the column
    /// does not exist or its value does not convert (a NULL converts only to an `Optional`).
    public func decode<T: SQLValueConvertible>(_ name: String, as type: T.Type = T.self) throws -> T {
        guard let index = columns.index(of: name) else {
            throw StorageError.typeMismatch(.init("no column '\(name)' in \(columns.names)"))
        }
        return try decode(index, as: type)
    }

    /// The value at a position converted to `T`.
    public func decode<T: SQLValueConvertible>(_ index: Int, as type: T.Type = T.self) throws -> T {
        guard values.indices.contains(index) else {
            throw StorageError.typeMismatch(.init("no column at index \(index); the row has \(values.count)"))
        }
        guard let value = T(sqlValue: values[index]) else {
            throw StorageError.typeMismatch(.init(
                "column '\(columns.names[index])' holds \(values[index].kindName), not \(T.self)"))
        }
        return value
    }
}

/// The type of a result column, as the driver reports it (declared or wire type), mapped onto the
/// ``SQLValue`` cases its values take. Raw values are stable (they travel in the database agent's frames).
public enum SQLColumnType: Int, Sendable, Hashable, CaseIterable, CustomStringConvertible {
    /// Not known: a NULL literal, an SQLite expression whose first value is NULL, or a result with no rows.
    case unknown = 0
    /// Integer types and booleans: values are ``SQLValue/integer(_:)``.
    case integer = 1
    /// Floating point types: values are ``SQLValue/double(_:)``.
    case double = 2
    /// Text and everything given in the server's text form (decimals, dates, JSON): ``SQLValue/text(_:)``.
    case text = 3
    /// Binary strings (`BLOB`, `BYTEA`, `VARBINARY`): ``SQLValue/blob(_:)``.
    case blob = 4

    public var description: String {
        switch self {
        case .unknown: return "unknown"
        case .integer: return "integer"
        case .double: return "double"
        case .text: return "text"
        case .blob: return "blob"
        }
    }
}

/// The column names of a result, with a lookup from name to position, and their types.
public struct SQLColumns: Sendable, Hashable {
    /// The names in order.
    public let names: [String]
    /// The type of each column, in the order of ``names`` (``SQLColumnType/unknown`` where not known).
    public let types: [SQLColumnType]
    private let exact: [String: Int]
    private let folded: [String: Int]

    /// Creates the column list; `types` must have one type per name (all ``SQLColumnType/unknown`` when
    /// omitted).
    public init(_ names: [String], types: [SQLColumnType]? = nil) {
        precondition(types == nil || types?.count == names.count, "one type per column")
        self.names = names
        self.types = types ?? Array(repeating: .unknown, count: names.count)
        var exact: [String: Int] = [:]
        var folded: [String: Int] = [:]
        for (i, name) in names.enumerated().reversed() {  // reversed: the first of equal names wins
            exact[name] = i
            folded[name.lowercased()] = i
        }
        self.exact = exact
        self.folded = folded
    }

    /// The number of columns.
    public var count: Int { names.count }

    /// The position of a name (exact match first, then case-insensitive).
    public func index(of name: String) -> Int? {
        exact[name] ?? folded[name.lowercased()]
    }
}

/// What a statement returned.
public struct SQLResult: Sendable, Hashable {
    /// The column names (empty for statements that return no rows).
    public var columns: SQLColumns
    /// The rows, in order.
    public var rows: [SQLRow]
    /// Rows inserted, updated or deleted by the statement (driver's count; 0 for queries).
    public var affectedRows: Int64
    /// The id of the last inserted row for SQLite (`last_insert_rowid`) and MySQL (`LAST_INSERT_ID`); `nil` for
    /// PostgreSQL, which returns ids with `RETURNING` (see ``SQLDialect/returningID(_:)``).
    public var lastInsertID: Int64?

    /// Creates a result.
    public init(columns: SQLColumns = SQLColumns([]), rows: [SQLRow] = [], affectedRows: Int64 = 0,
                lastInsertID: Int64? = nil) {
        self.columns = columns
        self.rows = rows
        self.affectedRows = affectedRows
        self.lastInsertID = lastInsertID
    }

    /// The first row, if any.
    public var first: SQLRow? { rows.first }
}
