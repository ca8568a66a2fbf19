// libFuzzer target for the chat server: its nine request routes registered on a MessageRouter the way ChatServer
// registers them, driving ChatCore on a mock clock, with the shell's other inputs in between: connections opening
// and closing, slow consumers, and the storage/KDF jobs completing (in any order, with any outcome, also after
// their connection closed). Built by scripts/fuzz (swift build --sanitize=fuzzer --sanitize=address in Fuzz/);
// ChatCore is internal (@testable import).
//
// Checked after every step: every frame sent decodes as its id's message; rooms and sessions agree (a member is a
// session in that room, a session's rooms have it as a member); a user online names a session logged in as it; no
// session is in more rooms than allowed; broadcasts go to live sessions only.
@testable import Chat
import FuzzSupport
import Messaging
import SwiftProtobuf

/// The core and what the last input produced; the router's handlers reach it through this box.
final class Hub: @unchecked Sendable {
    // @unchecked Sendable: libFuzzer runs one input at a time on one thread.
    var core: ChatCore
    var clock = FuzzClock()
    var actions: [ChatAction] = []

    init() {
        core = ChatCore(configuration: ChatConfiguration(
            maxMessageBytes: 64, maxRoomNameBytes: 8, maxRoomsPerUser: 3, messagesPerSecond: 4, historyLength: 3,
            maxQueuedOutputBytes: 1000, passwordIterations: PasswordHasher.minimumIterations, maxLoginFailures: 2,
            loginFailureWindow: .seconds(10)))
    }

    var unixMs: Int64 { 1_700_000_000_000 + Int64(clock.now / 1_000_000) }
}

func makeRouter(_ hub: Hub) -> MessageRouter<ChatPeer> {
    let router = MessageRouter<ChatPeer>()
    try! router.on(ChatMessageID.registerRequest, as: Switchyard_Chat_RegisterRequest.self) { r, m in
        hub.actions += hub.core.register(r, from: m.connection, now: hub.clock.now)
    }
    try! router.on(ChatMessageID.loginRequest, as: Switchyard_Chat_LoginRequest.self) { r, m in
        hub.actions += hub.core.login(r, from: m.connection, now: hub.clock.now)
    }
    try! router.on(ChatMessageID.joinRequest, as: Switchyard_Chat_JoinRequest.self) { r, m in
        hub.actions += hub.core.join(r, from: m.connection)
    }
    try! router.on(ChatMessageID.leaveRequest, as: Switchyard_Chat_LeaveRequest.self) { r, m in
        hub.actions += hub.core.leave(r, from: m.connection)
    }
    try! router.on(ChatMessageID.listRoomsRequest, as: Switchyard_Chat_ListRoomsRequest.self) { r, m in
        hub.actions += hub.core.listRooms(r, from: m.connection)
    }
    try! router.on(ChatMessageID.sayRequest, as: Switchyard_Chat_SayRequest.self) { r, m in
        hub.actions += hub.core.say(r, from: m.connection, now: hub.clock.now, unixMs: hub.unixMs)
    }
    try! router.on(ChatMessageID.privateMessageRequest, as: Switchyard_Chat_PrivateMessageRequest.self) { r, m in
        hub.actions += hub.core.privateMessage(r, from: m.connection, now: hub.clock.now, unixMs: hub.unixMs)
    }
    try! router.on(ChatMessageID.friendAddRequest, as: Switchyard_Chat_FriendAddRequest.self) { r, m in
        hub.actions += hub.core.addFriend(r, from: m.connection)
    }
    try! router.on(ChatMessageID.friendListRequest, as: Switchyard_Chat_FriendListRequest.self) { r, m in
        hub.actions += hub.core.listFriends(r, from: m.connection)
    }
    router.freeze()
    return router
}

let requestIDs: [ChatMessageID] = [
    .registerRequest, .loginRequest, .joinRequest, .leaveRequest, .listRoomsRequest, .sayRequest,
    .privateMessageRequest, .friendAddRequest, .friendListRequest,
]

/// The names and rooms come from a tiny alphabet, so users meet in rooms and names are taken.
let names = ["ann", "bob", "cy"]
let roomNames = ["r1", "r2", "r3", "r4"]
func name(_ input: inout FuzzInput) -> String {
    input.choice(16) == 0 ? input.text() : names[input.choice(names.count)]
}
func room(_ input: inout FuzzInput) -> String {
    input.choice(16) == 0 ? input.text() : roomNames[input.choice(roomNames.count)]
}

func body(for id: Int32, _ input: inout FuzzInput) -> [UInt8] {
    if input.choice(4) == 0 { return input.bytes() }
    let requestID = UInt32(input.choice(4))
    let message: any SwiftProtobuf.Message
    switch ChatMessageID(rawValue: id) {
    case .registerRequest:
        var m = Switchyard_Chat_RegisterRequest()
        (m.requestID, m.name, m.password) = (requestID, name(&input), input.text())
        message = m
    case .loginRequest:
        var m = Switchyard_Chat_LoginRequest()
        (m.requestID, m.name, m.password) = (requestID, name(&input), input.text())
        message = m
    case .joinRequest:
        var m = Switchyard_Chat_JoinRequest()
        (m.requestID, m.room) = (requestID, room(&input))
        message = m
    case .leaveRequest:
        var m = Switchyard_Chat_LeaveRequest()
        (m.requestID, m.room) = (requestID, room(&input))
        message = m
    case .listRoomsRequest:
        var m = Switchyard_Chat_ListRoomsRequest()
        m.requestID = requestID
        message = m
    case .sayRequest:
        var m = Switchyard_Chat_SayRequest()
        (m.requestID, m.room, m.text) = (requestID, room(&input), input.text(limit: 80))
        message = m
    case .privateMessageRequest:
        var m = Switchyard_Chat_PrivateMessageRequest()
        (m.requestID, m.to, m.text) = (requestID, name(&input), input.text(limit: 80))
        message = m
    case .friendAddRequest:
        var m = Switchyard_Chat_FriendAddRequest()
        (m.requestID, m.name) = (requestID, name(&input))
        message = m
    case .friendListRequest:
        var m = Switchyard_Chat_FriendListRequest()
        m.requestID = requestID
        message = m
    default:
        return input.bytes()
    }
    return try! message.serializedBytes()
}

/// The message type of each frame the server sends.
let replyTypes: [Int32: any SwiftProtobuf.Message.Type] = [
    ChatMessageID.registerReply.rawValue: Switchyard_Chat_RegisterReply.self,
    ChatMessageID.loginReply.rawValue: Switchyard_Chat_LoginReply.self,
    ChatMessageID.joinReply.rawValue: Switchyard_Chat_JoinReply.self,
    ChatMessageID.leaveReply.rawValue: Switchyard_Chat_LeaveReply.self,
    ChatMessageID.listRoomsReply.rawValue: Switchyard_Chat_ListRoomsReply.self,
    ChatMessageID.sayReply.rawValue: Switchyard_Chat_SayReply.self,
    ChatMessageID.roomMessage.rawValue: Switchyard_Chat_RoomMessage.self,
    ChatMessageID.privateMessageReply.rawValue: Switchyard_Chat_PrivateMessageReply.self,
    ChatMessageID.privateMessage.rawValue: Switchyard_Chat_PrivateMessage.self,
    ChatMessageID.friendAddReply.rawValue: Switchyard_Chat_FriendAddReply.self,
    ChatMessageID.friendListReply.rawValue: Switchyard_Chat_FriendListReply.self,
    ChatMessageID.presenceEvent.rawValue: Switchyard_Chat_PresenceEvent.self,
    ChatMessageID.notice.rawValue: Switchyard_Chat_Notice.self,
]

func checkFrame(_ frame: ChatFrame) {
    guard let type = replyTypes[frame.id.rawValue] else {
        invariant(false, "a frame with id \(frame.id.rawValue), which the server never sends")
        return
    }
    invariant((try? type.init(serializedBytes: frame.body)) != nil, "frame \(frame.id.rawValue) does not decode")
}

func check(_ hub: Hub) {
    let core = hub.core
    for action in hub.actions {
        switch action {
        case .send(let frame, _): checkFrame(frame)
        case .cutOff(_, let notice, _): checkFrame(notice)
        case .broadcast(let frame, let members):
            checkFrame(frame)
            for ids in members.byLoop.values {
                for id in ids { invariant(core.sessions[id] != nil, "a broadcast to a closed connection") }
            }
        default: break
        }
    }
    for (id, session) in core.sessions {
        invariant(session.peer.id == id, "session under another id")
        invariant(session.rooms.count <= core.configuration.maxRoomsPerUser, "\(session.rooms.count) rooms")
        for name in session.rooms {
            invariant(core.rooms[name]?.members.contains(id) == true, "a session's room does not have it")
        }
    }
    for (name, room) in core.rooms {
        for (loop, ids) in room.members.byLoop {
            for id in ids {
                invariant(core.sessions[id]?.peer.loop == loop, "a room member is not a session on its loop")
                invariant(core.sessions[id]?.rooms.contains(name) == true, "a member whose session left the room")
            }
        }
        invariant(room.history.count <= core.configuration.historyLength, "history longer than kept")
    }
    for (user, id) in core.online {
        invariant(core.sessions[id]?.user == user, "online user without its session")
    }
}

/// A job the shell is running (storage, the KDF); finished later, in any order.
enum Job {
    case register(RegisterJob)
    case login(LoginJob)
    case loadRoom(LoadRoomJob)
    case friend(FriendJob)
}

func finish(_ job: Job, _ hub: Hub, _ input: inout FuzzInput) {
    switch job {
    case .register(let job):
        let outcomes: [RegisterOutcome] = [.created, .nameTaken, .failed]
        hub.actions += hub.core.registered(job, outcomes[input.choice(outcomes.count)])
    case .login(let job):
        let outcome: LoginOutcome
        switch input.choice(4) {
        case 0, 1: outcome = .verified(friends: Set((0..<input.choice(3)).map { _ in name(&input) }), token: "t")
        case 2: outcome = .invalidCredentials
        default: outcome = .failed(passwordVerified: input.choice(2) == 0)
        }
        hub.actions += hub.core.loginVerified(job, outcome, now: hub.clock.now)
    case .loadRoom(let job):
        var history: ChatCore.RoomHistory?
        if input.choice(4) != 0 {
            let last = UInt64(input.choice(50))
            // Storage returns at most the job's limit of the newest messages.
            history = .init(messages: (0..<min(input.choice(5), Int(last), job.limit)).map { i in
                var m = Switchyard_Chat_RoomMessage()
                (m.room, m.sender, m.text, m.sequence) = (job.room, name(&input), "old", last - UInt64(i))
                return m
            }.reversed(), lastSequence: last)
        }
        hub.actions += hub.core.historyLoaded(job, history)
    case .friend(let job):
        let outcomes: [FriendOutcome] = [.stored, .noSuchUser, .failed]
        hub.actions += hub.core.friendshipStored(job, outcomes[input.choice(outcomes.count)])
    }
}

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzz(_ data: UnsafePointer<UInt8>, _ size: Int) -> Int32 {
    var input = FuzzInput(data, size)
    let hub = Hub()
    let router = makeRouter(hub)
    var live: [ChatPeer] = []
    var nextID: UInt64 = 1
    var jobs: [Job] = []
    func connect() -> ChatPeer {
        let peer = ChatPeer(id: nextID, loop: Int(nextID % 2))
        nextID += 1
        live.append(peer)
        hub.actions += hub.core.connected(peer, now: hub.clock.now)
        return peer
    }
    while !input.isAtEnd {
        hub.actions.removeAll(keepingCapacity: true)
        switch input.choice(14) {
        case 0...6:
            let fresh = live.isEmpty || live.count < 4 && input.choice(8) == 0
            let peer = fresh ? connect() : live[input.choice(live.count)]
            let id = messageID(&input, routed: requestIDs.map(\.rawValue))
            dispatch(router, id: id, body: body(for: id, &input), connection: peer)
        case 7, 8:
            if !jobs.isEmpty { finish(jobs.remove(at: input.choice(jobs.count)), hub, &input) }
        case 9:
            _ = connect()
        case 10:
            if !live.isEmpty { hub.actions += hub.core.closed(live.remove(at: input.choice(live.count)).id) }
        case 11:
            if !live.isEmpty {
                hub.actions += hub.core.outputBacklogged(live[input.choice(live.count)].id,
                                                         queuedBytes: Int(input.uint16()))
            }
        default: hub.clock.advance(&input)
        }
        for action in hub.actions {
            switch action {
            case .register(let job): jobs.append(.register(job))
            case .verifyLogin(let job): jobs.append(.login(job))
            case .loadRoom(let job): jobs.append(.loadRoom(job))
            case .addFriend(let job): jobs.append(.friend(job))
            default: break
            }
        }
        check(hub)
    }
    return 0
}
