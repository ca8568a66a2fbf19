import LarsWire

/// Frame ids of the database agent protocol (PROTOCOL.md: 300+), with the protobuf body of each
/// (Protos/dbagent.proto).
///
/// | id  | name      | direction       | body                         |
/// |----:|-----------|-----------------|------------------------------|
/// | 300 | execute   | caller -> agent | `Switchyard_Dbagent_Execute` |
/// | 301 | batch     | caller -> agent | `Switchyard_Dbagent_Batch`   |
/// | 302 | cancel    | caller -> agent | `Switchyard_Dbagent_Cancel`  |
/// | 303 | more rows | caller -> agent | `Switchyard_Dbagent_MoreRows`|
/// | 304 | hello     | caller -> agent | `Switchyard_Dbagent_Hello`   |
/// | 305 | transaction | caller -> agent | `Switchyard_Dbagent_Transaction` |
/// | 310 | columns   | agent -> caller | `Switchyard_Dbagent_Columns` |
/// | 311 | rows      | agent -> caller | `Switchyard_Dbagent_Rows`    |
/// | 312 | done      | agent -> caller | `Switchyard_Dbagent_Done`    |
/// | 313 | error     | agent -> caller | `Switchyard_Dbagent_Error`   |
/// | 314 | welcome   | agent -> caller | `Switchyard_Dbagent_Welcome` |
///
/// Every request carries the caller's request id and ends with one done or one error of that id. Rows come in
/// chunks: the first is sent at once, each later one only after a more-rows of the request (credit). A hello is
/// answered welcome (or error); a transaction (begin, commit, rollback) done or error.
///
/// This module holds the wire contract only (standard library, SwiftProtobuf, LarsWire), so that both the agent
/// (DatabaseAgent) and Storage's `agent://` driver speak it without depending on each other.
public struct DatabaseAgentMessageID: FrameMessageID {
    public let rawValue: Int32
    public init(rawValue: Int32) { self.rawValue = rawValue }

    public static let execute = DatabaseAgentMessageID(rawValue: 300)
    public static let batch = DatabaseAgentMessageID(rawValue: 301)
    public static let cancel = DatabaseAgentMessageID(rawValue: 302)
    public static let moreRows = DatabaseAgentMessageID(rawValue: 303)
    public static let hello = DatabaseAgentMessageID(rawValue: 304)
    public static let transaction = DatabaseAgentMessageID(rawValue: 305)
    public static let columns = DatabaseAgentMessageID(rawValue: 310)
    public static let rows = DatabaseAgentMessageID(rawValue: 311)
    public static let done = DatabaseAgentMessageID(rawValue: 312)
    public static let error = DatabaseAgentMessageID(rawValue: 313)
    public static let welcome = DatabaseAgentMessageID(rawValue: 314)
}
