import Storage

/// The type of a result column, as far as the agent knows it.
public enum ColumnType: String, Sendable, Hashable {
    case unknown, integer, double, text, blob

    init(_ wire: Switchyard_Dbagent_ColumnType) {
        self.init(SQLColumnType(wire))
    }

    var wire: Switchyard_Dbagent_ColumnType {
        switch self {
        case .unknown: return .unknown
        case .integer: return .integer
        case .double: return .real
        case .text: return .text
        case .blob: return .blob
        }
    }

    /// The type Storage read from the database for a column.
    init(_ storage: SQLColumnType) {
        switch storage {
        case .integer: self = .integer
        case .double: self = .double
        case .text: self = .text
        case .blob: self = .blob
        case .unknown: self = .unknown
        }
    }

    /// The type of the non-null values of a column when they all agree; unknown otherwise.
    static func of(_ values: some Sequence<SQLValue>) -> ColumnType {
        var found: ColumnType?
        for value in values {
            let type: ColumnType
            switch value {
            case .null: continue
            case .integer: type = .integer
            case .double: type = .double
            case .text: type = .text
            case .blob: type = .blob
            }
            if let found, found != type { return .unknown }
            found = type
        }
        return found ?? .unknown
    }
}

/// One column of a result: its name and type.
public struct ColumnInfo: Sendable, Hashable {
    public var name: String
    public var type: ColumnType
    public init(name: String, type: ColumnType = .unknown) {
        self.name = name
        self.type = type
    }
}
