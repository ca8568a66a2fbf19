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
public enum ChatMessageID {
    public static let registerRequest: Int32 = 200
    public static let registerReply: Int32 = 201
    public static let loginRequest: Int32 = 202
    public static let loginReply: Int32 = 203
    public static let joinRequest: Int32 = 204
    public static let joinReply: Int32 = 205
    public static let leaveRequest: Int32 = 206
    public static let leaveReply: Int32 = 207
    public static let listRoomsRequest: Int32 = 208
    public static let listRoomsReply: Int32 = 209
    public static let sayRequest: Int32 = 210
    public static let sayReply: Int32 = 211
    public static let roomMessage: Int32 = 212
    public static let privateMessageRequest: Int32 = 213
    public static let privateMessageReply: Int32 = 214
    public static let privateMessage: Int32 = 215
    public static let friendAddRequest: Int32 = 216
    public static let friendAddReply: Int32 = 217
    public static let friendListRequest: Int32 = 218
    public static let friendListReply: Int32 = 219
    public static let presenceEvent: Int32 = 220
    public static let notice: Int32 = 221
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
