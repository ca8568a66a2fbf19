import LarsWire
import Messaging
import Reactor
import SwiftProtobuf
import Synchronization
import SwitchyardCore

/// Something the server pushed, in arrival order.
public enum ChatEvent: Sendable, Equatable {
    /// A message of a room the client is in.
    case roomMessage(Switchyard_Chat_RoomMessage)
    /// A private message to this user.
    case privateMessage(Switchyard_Chat_PrivateMessage)
    /// A friend came online or went offline.
    case presence(user: String, online: Bool)
    /// A server notice (for instance right before the server closes a slow consumer).
    case notice(Switchyard_Chat_Status)
}

/// Errors of `ChatClient`.
public enum ChatClientError: Error, Sendable, Equatable, CustomStringConvertible {
    /// The server refused the request.
    case refused(Switchyard_Chat_StatusCode, String)
    /// The connection is closed.
    case closed
    /// No reply within the request timeout.
    case timeout
    /// The reply's body did not decode.
    case badReply(String)

    public var description: String {
        switch self {
        case .refused(let code, let reason): return "\(code): \(reason)"
        case .closed: return "the connection is closed"
        case .timeout: return "no reply in time"
        case .badReply(let reason): return "bad reply: \(reason)"
        }
    }

    /// The status code when the server refused.
    public var code: Switchyard_Chat_StatusCode? {
        if case .refused(let code, _) = self { return code }
        return nil
    }
}

/// What a join returns.
public struct JoinResult: Sendable, Equatable {
    public var room: String
    public var memberCount: Int
    /// The room's last messages, oldest first.
    public var history: [Switchyard_Chat_RoomMessage]
}

/// An async/await client of the chat server, on a `FramedClient` whose handlers run on its loop.
///
/// Requests await their reply (matched by request id in a `RequestCorrelator`, with a deadline that a timer on
/// the loop sweeps) and throw `ChatClientError.refused` with the server's status when it says no. Pushed frames
/// come out of `events`, in order; the stream is unbounded (the client keeps reading however slowly the events are
/// consumed) and ends when the connection closes. A heartbeat goes out whenever the client has sent nothing for
/// `heartbeatInterval` (`HeartbeatPolicy`, on the loop), so the server's idle timeout keeps a quiet client online.
/// No task runs in the background: the loop does the reading, the timers and the heartbeats. Safe to use from any
/// task.
public final class ChatClient: Sendable {
    private let framed: FramedClient
    private let receiver: Receiver
    private let requestTimeout: Duration
    private let nextRequestID = Atomic<UInt32>(1)
    /// The pushed events, in arrival order; ends when the connection closes.
    public let events: AsyncStream<ChatEvent>

    /// What the loop hands frames to: replies to the correlator, pushes to `events`; the close ends both.
    private final class Receiver: Sendable {
        let replies = RequestCorrelator<UInt32, InboundFrame>()
        let events: AsyncStream<ChatEvent>
        let eventSink: AsyncStream<ChatEvent>.Continuation
        /// The connect outcome, then the close waiters and the request sweep timer.
        private let state = Mutex(State())

        struct State {
            var connectWaiter: CheckedContinuation<Void, Error>?
            var connectResult: Result<Void, Error>?
            var closed = false
            var closeWaiters: [CheckedContinuation<Void, Never>] = []
            var sweep: TimerHandle?
        }

        init() {
            (events, eventSink) = AsyncStream.makeStream(of: ChatEvent.self, bufferingPolicy: .unbounded)
        }

        /// Loop thread: one frame from the server.
        func handle(_ m: InboundMessage<TCPConnection>) {
            switch ChatMessageID(rawValue: m.messageID) {
            case ChatMessageID.roomMessage:
                if let e = try? Switchyard_Chat_RoomMessage(serializedBytes: m.body) {
                    eventSink.yield(.roomMessage(e))
                }
            case ChatMessageID.privateMessage:
                if let e = try? Switchyard_Chat_PrivateMessage(serializedBytes: m.body) {
                    eventSink.yield(.privateMessage(e))
                }
            case ChatMessageID.presenceEvent:
                if let e = try? Switchyard_Chat_PresenceEvent(serializedBytes: m.body) {
                    eventSink.yield(.presence(user: e.user, online: e.online))
                }
            case ChatMessageID.notice:
                if let e = try? Switchyard_Chat_Notice(serializedBytes: m.body) { eventSink.yield(.notice(e.status)) }
            default:
                // Every reply has `uint32 request_id = 1`: read it through a message that has only that field.
                guard let header = try? Switchyard_Chat_ListRoomsRequest(serializedBytes: m.body) else { return }
                replies.resume(header.requestID, with: InboundFrame(messageID: m.messageID, body: m.bodyBytes))
            }
        }

        /// Loop thread: connected (or not).
        func connectFinished(_ result: Result<Void, Error>) {
            let waiter = state.withLock { s -> CheckedContinuation<Void, Error>? in
                guard s.connectResult == nil else { return nil }
                s.connectResult = result
                defer { s.connectWaiter = nil }
                return s.connectWaiter
            }
            waiter?.resume(with: result)
        }

        func waitConnected() async throws {
            try await withCheckedThrowingContinuation { (c: CheckedContinuation<Void, Error>) in
                let ready = state.withLock { s -> Result<Void, Error>? in
                    if let r = s.connectResult { return r }
                    s.connectWaiter = c
                    return nil
                }
                if let ready { c.resume(with: ready) }
            }
        }

        func setSweep(_ timer: TimerHandle) {
            let closed = state.withLock { s -> Bool in
                if !s.closed { s.sweep = timer }
                return s.closed
            }
            if closed { timer.cancel() }
        }

        /// Loop thread: the connection closed; every request and the events end.
        func closed() {
            let (waiters, sweep) = state.withLock { s -> ([CheckedContinuation<Void, Never>], TimerHandle?) in
                s.closed = true
                defer {
                    s.closeWaiters = []
                    s.sweep = nil
                }
                return (s.closeWaiters, s.sweep)
            }
            sweep?.cancel()
            replies.failAll(ChatClientError.closed)
            eventSink.finish()
            for w in waiters { w.resume() }
        }

        func waitClosed() async {
            await withCheckedContinuation { (c: CheckedContinuation<Void, Never>) in
                let done = state.withLock { s -> Bool in
                    if s.closed { return true }
                    s.closeWaiters.append(c)
                    return false
                }
                if done { c.resume() }
            }
        }
    }

    private init(framed: FramedClient, receiver: Receiver, requestTimeout: Duration) {
        self.framed = framed
        self.receiver = receiver
        self.requestTimeout = requestTimeout
        events = receiver.events
    }

    /// Connects to a chat server.
    ///
    /// - Parameters:
    ///   - heartbeatInterval: Send a heartbeat when nothing has been sent for this long; nil sends none (the
    ///     server's idle timeout then closes the connection once the client falls silent).
    ///   - requestTimeout: How long a request waits for its reply.
    public static func connect(
        host: String = "127.0.0.1", port: Int, loop: EventLoop, heartbeatInterval: Duration? = .seconds(5),
        requestTimeout: Duration = .seconds(10)
    ) async throws -> ChatClient {
        let receiver = Receiver()
        let router = MessageRouter<TCPConnection>()
        try router.onUnknown { receiver.handle($0) }
        let framed = try FramedClient(
            loop: loop,
            configuration: FramedClientConfiguration(
                client: ClientConfiguration(host: host, port: port, connectTimeout: .seconds(5), reconnect: false),
                heartbeatInterval: heartbeatInterval),
            router: router,
            onConnect: { _ in receiver.connectFinished(.success(())) },
            onClose: { _ in receiver.closed() },
            onConnectFailed: { receiver.connectFinished(.failure($0)) })
        try await withTaskCancellationHandler {
            framed.connect()
            try await receiver.waitConnected()
        } onCancel: {
            framed.disconnect()
            receiver.connectFinished(.failure(CancellationError()))
        }
        // Late requests fail when this timer finds them past their deadline (no task sleeps per request).
        let sweepEvery = min(max(requestTimeout / 10, .milliseconds(10)), .seconds(1))
        let replies = receiver.replies
        receiver.setSweep(loop.scheduleRepeating(every: sweepEvery) {
            replies.expire(now: SystemInfo.monotonicNanoseconds())
        })
        return ChatClient(framed: framed, receiver: receiver, requestTimeout: requestTimeout)
    }

    /// Sends a request with a fresh request id and waits for the frame that answers it.
    private func request<Reply: SwiftProtobuf.Message>(
        _ id: ChatMessageID, _ replyType: Reply.Type, _ build: (UInt32) -> [UInt8]?
    ) async throws -> Reply {
        var requestID = nextRequestID.wrappingAdd(1, ordering: .relaxed).oldValue
        if requestID == 0 { requestID = nextRequestID.wrappingAdd(1, ordering: .relaxed).oldValue }
        guard let body = build(requestID) else { throw ChatClientError.badReply("request did not encode") }
        let deadline = SystemInfo.monotonicNanoseconds() &+ requestTimeout.nanosecondsSaturated
        let framed = self.framed
        let frame = try await receiver.replies.request(requestID, deadline: deadline,
                                                       timeoutError: ChatClientError.timeout) {
            guard framed.sendFrame(messageID: id.rawValue, body: body) else { throw ChatClientError.closed }
        }
        do {
            return try frame.decode(as: Reply.self)
        } catch {
            throw ChatClientError.badReply("\(error)")
        }
    }

    private static func check(_ status: Switchyard_Chat_Status) throws {
        if status.code != .ok { throw ChatClientError.refused(status.code, status.reason) }
    }

    // MARK: Requests

    /// Creates an account.
    public func register(name: String, password: String) async throws {
        let reply = try await request(ChatMessageID.registerRequest, Switchyard_Chat_RegisterReply.self) { rid in
            var r = Switchyard_Chat_RegisterRequest()
            r.requestID = rid
            r.name = name
            r.password = password
            return try? r.serializedBytes()
        }
        try Self.check(reply.status)
    }

    /// Logs in; returns the session token.
    @discardableResult
    public func login(name: String, password: String) async throws -> String {
        let reply = try await request(ChatMessageID.loginRequest, Switchyard_Chat_LoginReply.self) { rid in
            var r = Switchyard_Chat_LoginRequest()
            r.requestID = rid
            r.name = name
            r.password = password
            return try? r.serializedBytes()
        }
        try Self.check(reply.status)
        return reply.token
    }

    /// Joins (and creates if needed) a room; returns its member count and recent history.
    @discardableResult
    public func join(_ room: String) async throws -> JoinResult {
        let reply = try await request(ChatMessageID.joinRequest, Switchyard_Chat_JoinReply.self) { rid in
            var r = Switchyard_Chat_JoinRequest()
            r.requestID = rid
            r.room = room
            return try? r.serializedBytes()
        }
        try Self.check(reply.status)
        return JoinResult(room: reply.room, memberCount: Int(reply.memberCount), history: reply.history)
    }

    /// Leaves a room.
    public func leave(_ room: String) async throws {
        let reply = try await request(ChatMessageID.leaveRequest, Switchyard_Chat_LeaveReply.self) { rid in
            var r = Switchyard_Chat_LeaveRequest()
            r.requestID = rid
            r.room = room
            return try? r.serializedBytes()
        }
        try Self.check(reply.status)
    }

    /// The rooms with members, with their member counts.
    public func rooms() async throws -> [Switchyard_Chat_RoomInfo] {
        let reply = try await request(ChatMessageID.listRoomsRequest, Switchyard_Chat_ListRoomsReply.self) { rid in
            var r = Switchyard_Chat_ListRoomsRequest()
            r.requestID = rid
            return try? r.serializedBytes()
        }
        try Self.check(reply.status)
        return reply.rooms
    }

    /// Sends a message to a room; returns the sequence number the server gave it.
    @discardableResult
    public func say(_ text: String, in room: String) async throws -> UInt64 {
        let reply = try await request(ChatMessageID.sayRequest, Switchyard_Chat_SayReply.self) { rid in
            var r = Switchyard_Chat_SayRequest()
            r.requestID = rid
            r.room = room
            r.text = text
            return try? r.serializedBytes()
        }
        try Self.check(reply.status)
        return reply.sequence
    }

    /// Sends a private message to an online user.
    public func msg(to user: String, _ text: String) async throws {
        let reply = try await request(ChatMessageID.privateMessageRequest,
                                      Switchyard_Chat_PrivateMessageReply.self) { rid in
            var r = Switchyard_Chat_PrivateMessageRequest()
            r.requestID = rid
            r.to = user
            r.text = text
            return try? r.serializedBytes()
        }
        try Self.check(reply.status)
    }

    /// Adds a friend (both ways).
    public func addFriend(_ name: String) async throws {
        let reply = try await request(ChatMessageID.friendAddRequest, Switchyard_Chat_FriendAddReply.self) { rid in
            var r = Switchyard_Chat_FriendAddRequest()
            r.requestID = rid
            r.name = name
            return try? r.serializedBytes()
        }
        try Self.check(reply.status)
    }

    /// The friends, with whether each is online.
    public func friends() async throws -> [Switchyard_Chat_Friend] {
        let reply = try await request(ChatMessageID.friendListRequest, Switchyard_Chat_FriendListReply.self) { rid in
            var r = Switchyard_Chat_FriendListRequest()
            r.requestID = rid
            return try? r.serializedBytes()
        }
        try Self.check(reply.status)
        return reply.friends
    }

    /// Closes the connection (after flushing) and stops the heartbeats; `events` ends. Returns once it is closed.
    public func close() async {
        framed.disconnect()
        await receiver.waitClosed()
    }
}
