#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif
import DatabaseAgentProtocol

// The database agent's value coding (Protos/dbagent.proto `Value`), here because Storage owns SQLValue: the agent
// (DatabaseAgent) and the agent:// driver both use it.
extension Switchyard_Dbagent_Value {
    /// The wire form of a value.
    public init(_ value: SQLValue) {
        self.init()
        switch value {
        case .null: kind = .null(true)
        case .integer(let v): kind = .integer(v)
        case .double(let v): kind = .real(v)
        case .text(let v): kind = .text(v)
        case .blob(let v): kind = .blob(Data(v))
        }
    }

    /// The value it carries (no kind set: NULL).
    public var sqlValue: SQLValue {
        switch kind {
        case .none, .null: return .null
        case .integer(let v): return .integer(v)
        case .real(let v): return .double(v)
        case .text(let v): return .text(v)
        case .blob(let v): return .blob([UInt8](v))
        }
    }
}

extension SQLColumnType {
    /// The type a column's wire type names.
    public init(_ wire: Switchyard_Dbagent_ColumnType) {
        switch wire {
        case .integer: self = .integer
        case .real: self = .double
        case .text: self = .text
        case .blob: self = .blob
        default: self = .unknown
        }
    }
}
