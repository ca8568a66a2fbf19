import Logging
import SwiftProtobuf

/// A connection as `ChatCore` knows it: an id and the loop it lives on.
struct ChatPeer: Hashable, Sendable {
    /// The connection's id (unique for the server's lifetime).
    var id: UInt64
    /// The index of the connection's loop in the group. An opaque number to the core: room members are grouped by
    /// it, so a room message is one encoding and one task per loop.
    var loop: Int
    /// The peer's IPv4 address: the unit of the per-source limits (requests in flight, registrations, the login
    /// throttle).
    var source: UInt32 = 0
}

/// One frame to send: the chat message id and the encoded protobuf body.
struct ChatFrame: Sendable, Equatable {
    var id: ChatMessageID
    var body: [UInt8]

    /// Encodes `message` (proto3 messages always encode; an empty body would be sent if one did not).
    init<M: SwiftProtobuf.Message>(_ message: M, id: ChatMessageID) {
        self.id = id
        body = (try? message.serializedBytes()) ?? []
    }

    /// The body decoded as `type` (tests and logs).
    func decode<M: SwiftProtobuf.Message>(as type: M.Type) throws -> M { try M(serializedBytes: body) }
}

/// What `ChatCore` counts; the shell adds it to `ChatStatistics` and the metrics.
enum ChatCounter: Int, Sendable, Equatable, CaseIterable {
    /// A connection was accepted.
    case connection
    /// A login succeeded.
    case login
    /// A login was refused for a wrong name or password.
    case failedLogin
    /// A request was refused by a limit (size, rate, rooms per user, room name length).
    case limitRejection
    /// Room or private messages handed to members' connections.
    case delivered
    /// A slow consumer was cut off.
    case slowConsumerCutOff
    /// A request refused at once because its connection or source had too many requests in progress.
    case busyRejection
    /// A registration refused by its source's rate limit.
    case registrationRateLimited
    /// A room message refused because the history queue was full (the sender was told; nothing was lost).
    case historyRefused
    /// Room messages whose history write failed on every attempt.
    case historyLost
}


/// A register request that passed the checks: hash the password (the KDF) and insert the user, then feed
/// `ChatCore.registered(_:_:)`.
struct RegisterJob: Sendable, Equatable {
    var peer: ChatPeer
    var requestID: UInt32
    var name: String
    var password: String
    var iterations: Int
}

/// A login that passed the checks and the throttle: look the user up, verify the password (or hash against a decoy
/// when there is no such user, so both failures take the same time), load the friends, then feed
/// `ChatCore.loginVerified(_:_:now:)`.
struct LoginJob: Sendable, Equatable {
    var peer: ChatPeer
    var requestID: UInt32
    var name: String
    var password: String
}

/// A join of a room that is not in memory: load its history, then feed `ChatCore.historyLoaded(_:_:)`.
struct LoadRoomJob: Sendable, Equatable {
    var peer: ChatPeer
    var requestID: UInt32
    var room: String
    var limit: Int
}

/// A friend add that passed the checks: check the friend exists and store the friendship, then feed
/// `ChatCore.friendshipStored(_:_:)`.
struct FriendJob: Sendable, Equatable {
    var peer: ChatPeer
    var requestID: UInt32
    var user: String
    var friend: String
}

/// How a `RegisterJob` ended.
enum RegisterOutcome: Sendable, Equatable {
    case created
    case nameTaken
    /// Storage or the KDF failed (the shell logged why).
    case failed
}

/// How a `LoginJob` ended.
enum LoginOutcome: Sendable, Equatable {
    /// The password matched: the user's friends and a fresh session token.
    case verified(friends: Set<String>, token: String)
    /// No such user, or a wrong password.
    case invalidCredentials
    /// Storage failed (the shell logged why); `passwordVerified` when it failed after the password matched, loading
    /// the friends.
    case failed(passwordVerified: Bool)
}

/// How a `FriendJob` ended.
enum FriendOutcome: Sendable, Equatable {
    case stored
    case noSuchUser
    /// Storage failed (the shell logged why).
    case failed
}

/// What the shell does for `ChatCore`. Counts are added and sends and broadcasts posted to the connections' loops
/// in the order the core returned them, under the shell's lock (that order is the delivery order); the rest is
/// performed after unlocking.
enum ChatAction: Sendable, Equatable {
    /// One frame to one connection (a reply, a private message, a presence event).
    case send(ChatFrame, to: ChatPeer)
    /// One frame, encoded once, to every member of a room: one task per loop.
    case broadcast(ChatFrame, to: RoomMembers)
    /// A slow consumer: send it `notice`, close it gracefully, and hard after `grace`.
    case cutOff(ChatPeer, notice: ChatFrame, grace: Duration)
    /// Run the KDF and storage of a registration; feed the outcome to `registered`.
    case register(RegisterJob)
    /// Verify a login against storage; feed the outcome to `loginVerified`.
    case verifyLogin(LoginJob)
    /// Load a room's history; feed it to `historyLoaded`.
    case loadRoom(LoadRoomJob)
    /// Store a friendship; feed the outcome to `friendshipStored`.
    case addFriend(FriendJob)
    /// Queue a room message for the history table.
    case appendHistory(Switchyard_Chat_RoomMessage)
    /// Add to a counter.
    case count(ChatCounter, Int)
    /// Log a line (never per message: refusals and state changes only).
    case log(Logger.Level, Logger.Message, Logger.Metadata)
}
