import LarsWire

/// Frame ids of the chat protocol (PROTOCOL.md: 200+), with the protobuf body of each (Protos/chat.proto).
///
/// Requests carry a `request_id` that their reply echoes. Pushed frames (room and private messages, presence,
/// notices) have no request id and may arrive between a request and its reply.
///
/// | id  | name                 | direction        | body                                  |
/// |----:|----------------------|------------------|---------------------------------------|
/// | 200 | register             | client -> server | `Switchyard_Chat_RegisterRequest`     |
/// | 201 | register reply       | server -> client | `Switchyard_Chat_RegisterReply`       |
/// | 202 | login                | client -> server | `Switchyard_Chat_LoginRequest`        |
/// | 203 | login reply          | server -> client | `Switchyard_Chat_LoginReply`          |
/// | 204 | join                 | client -> server | `Switchyard_Chat_JoinRequest`         |
/// | 205 | join reply (history) | server -> client | `Switchyard_Chat_JoinReply`           |
/// | 206 | leave                | client -> server | `Switchyard_Chat_LeaveRequest`        |
/// | 207 | leave reply          | server -> client | `Switchyard_Chat_LeaveReply`          |
/// | 208 | list rooms           | client -> server | `Switchyard_Chat_ListRoomsRequest`    |
/// | 209 | rooms reply          | server -> client | `Switchyard_Chat_ListRoomsReply`      |
/// | 210 | say (to a room)      | client -> server | `Switchyard_Chat_SayRequest`          |
/// | 211 | say reply            | server -> client | `Switchyard_Chat_SayReply`            |
/// | 212 | room message (push)  | server -> client | `Switchyard_Chat_RoomMessage`         |
/// | 213 | private message      | client -> server | `Switchyard_Chat_PrivateMessageRequest` |
/// | 214 | private reply        | server -> client | `Switchyard_Chat_PrivateMessageReply` |
/// | 215 | private msg (push)   | server -> client | `Switchyard_Chat_PrivateMessage`      |
/// | 216 | friend add           | client -> server | `Switchyard_Chat_FriendAddRequest`    |
/// | 217 | friend add reply     | server -> client | `Switchyard_Chat_FriendAddReply`      |
/// | 218 | friend list          | client -> server | `Switchyard_Chat_FriendListRequest`   |
/// | 219 | friend list reply    | server -> client | `Switchyard_Chat_FriendListReply`     |
/// | 220 | presence (push)      | server -> client | `Switchyard_Chat_PresenceEvent`       |
/// | 221 | notice (push)        | server -> client | `Switchyard_Chat_Notice`              |
///
/// Heartbeats are the framework's (`MessageID.heartbeat`, id 0, empty body).
public struct ChatMessageID: FrameMessageID {
    public let rawValue: Int32
    public init(rawValue: Int32) { self.rawValue = rawValue }

    public static let registerRequest = ChatMessageID(rawValue: 200)
    public static let registerReply = ChatMessageID(rawValue: 201)
    public static let loginRequest = ChatMessageID(rawValue: 202)
    public static let loginReply = ChatMessageID(rawValue: 203)
    public static let joinRequest = ChatMessageID(rawValue: 204)
    public static let joinReply = ChatMessageID(rawValue: 205)
    public static let leaveRequest = ChatMessageID(rawValue: 206)
    public static let leaveReply = ChatMessageID(rawValue: 207)
    public static let listRoomsRequest = ChatMessageID(rawValue: 208)
    public static let listRoomsReply = ChatMessageID(rawValue: 209)
    public static let sayRequest = ChatMessageID(rawValue: 210)
    public static let sayReply = ChatMessageID(rawValue: 211)
    public static let roomMessage = ChatMessageID(rawValue: 212)
    public static let privateMessageRequest = ChatMessageID(rawValue: 213)
    public static let privateMessageReply = ChatMessageID(rawValue: 214)
    public static let privateMessage = ChatMessageID(rawValue: 215)
    public static let friendAddRequest = ChatMessageID(rawValue: 216)
    public static let friendAddReply = ChatMessageID(rawValue: 217)
    public static let friendListRequest = ChatMessageID(rawValue: 218)
    public static let friendListReply = ChatMessageID(rawValue: 219)
    public static let presenceEvent = ChatMessageID(rawValue: 220)
    public static let notice = ChatMessageID(rawValue: 221)
}

extension Switchyard_Chat_Status {
    /// A status with a code and a reason.
    public init(_ code: Switchyard_Chat_StatusCode, _ reason: String = "") {
        self.init()
        self.code = code
        self.reason = reason
    }

    /// The OK status.
    public static var ok: Switchyard_Chat_Status { Switchyard_Chat_Status(.ok) }
}
