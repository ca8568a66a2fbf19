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
/// | 310 | columns   | agent -> caller | `Switchyard_Dbagent_Columns` |
/// | 311 | rows      | agent -> caller | `Switchyard_Dbagent_Rows`    |
/// | 312 | done      | agent -> caller | `Switchyard_Dbagent_Done`    |
/// | 313 | error     | agent -> caller | `Switchyard_Dbagent_Error`   |
///
/// Every request carries the caller's request id and ends with one done or one error of that id. Rows come in
/// chunks: the first is sent at once, each later one only after a more-rows of the request (credit).
public struct DatabaseAgentMessageID: FrameMessageID {
    public let rawValue: Int32
    public init(rawValue: Int32) { self.rawValue = rawValue }

    public static let execute = DatabaseAgentMessageID(rawValue: 300)
    public static let batch = DatabaseAgentMessageID(rawValue: 301)
    public static let cancel = DatabaseAgentMessageID(rawValue: 302)
    public static let moreRows = DatabaseAgentMessageID(rawValue: 303)
    public static let columns = DatabaseAgentMessageID(rawValue: 310)
    public static let rows = DatabaseAgentMessageID(rawValue: 311)
    public static let done = DatabaseAgentMessageID(rawValue: 312)
    public static let error = DatabaseAgentMessageID(rawValue: 313)
}
