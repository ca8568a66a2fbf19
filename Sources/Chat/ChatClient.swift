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
                if let e = try? Switchyard_Chat_RoomMessage(serializedBytes: m.body.bytes) {
                    eventSink.yield(.roomMessage(e))
                }
            case ChatMessageID.privateMessage:
                if let e = try? Switchyard_Chat_PrivateMessage(serializedBytes: m.body.bytes) {
                    eventSink.yield(.privateMessage(e))
                }
            case ChatMessageID.presenceEvent:
                if let e = try? Switchyard_Chat_PresenceEvent(serializedBytes: m.body.bytes) {
                    eventSink.yield(.presence(user: e.user, online: e.online))
                }
            case ChatMessageID.notice:
                if let e = try? Switchyard_Chat_Notice(serializedBytes: m.body.bytes) { eventSink.yield(.notice(e.status)) }
            default:
                // Every reply has `uint32 request_id = 1`: read it through a message that has only that field.
                guard let header = try? Switchyard_Chat_ListRoomsRequest(serializedBytes: m.body.bytes) else { return }
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

    /// Sends `message` with a fresh request id, waits for the frame that answers it and throws its status unless
    /// it is OK.
    private func request<Request: ChatRequestMessage, Reply: ChatReplyMessage>(
        _ id: ChatMessageID, _ message: Request, _ replyType: Reply.Type
    ) async throws -> Reply {
        var requestID = nextRequestID.wrappingAdd(1, ordering: .relaxed).oldValue
        if requestID == 0 { requestID = nextRequestID.wrappingAdd(1, ordering: .relaxed).oldValue }
        var message = message
        message.requestID = requestID
        guard let body: [UInt8] = try? message.serializedBytes() else {
            throw ChatClientError.badReply("request did not encode")
        }
        let deadline = SystemInfo.monotonicNanoseconds() &+ requestTimeout.nanosecondsSaturated
        let framed = self.framed
        let frame = try await receiver.replies.request(requestID, deadline: deadline,
                                                       timeoutError: ChatClientError.timeout) {
            guard framed.sendFrame(messageID: id.rawValue, body: body) else { throw ChatClientError.closed }
        }
        let reply: Reply
        do {
            reply = try frame.decode(as: Reply.self)
        } catch {
            throw ChatClientError.badReply("\(error)")
        }
        if reply.status.code != .ok { throw ChatClientError.refused(reply.status.code, reply.status.reason) }
        return reply
    }

    // MARK: Requests

    /// Creates an account.
    public func register(name: String, password: String) async throws {
        let r = Switchyard_Chat_RegisterRequest.with { $0.name = name; $0.password = password }
        _ = try await request(.registerRequest, r, Switchyard_Chat_RegisterReply.self)
    }

    /// Logs in; returns the session token.
    @discardableResult
    public func login(name: String, password: String) async throws -> String {
        let r = Switchyard_Chat_LoginRequest.with { $0.name = name; $0.password = password }
        return try await request(.loginRequest, r, Switchyard_Chat_LoginReply.self).token
    }

    /// Joins (and creates if needed) a room; returns its member count and recent history.
    @discardableResult
    public func join(_ room: String) async throws -> JoinResult {
        let reply = try await request(.joinRequest, Switchyard_Chat_JoinRequest.with { $0.room = room },
                                      Switchyard_Chat_JoinReply.self)
        return JoinResult(room: reply.room, memberCount: Int(reply.memberCount), history: reply.history)
    }

    /// Leaves a room.
    public func leave(_ room: String) async throws {
        _ = try await request(.leaveRequest, Switchyard_Chat_LeaveRequest.with { $0.room = room },
                              Switchyard_Chat_LeaveReply.self)
    }

    /// The rooms with members, with their member counts.
    public func rooms() async throws -> [Switchyard_Chat_RoomInfo] {
        try await request(.listRoomsRequest, Switchyard_Chat_ListRoomsRequest(), Switchyard_Chat_ListRoomsReply.self)
            .rooms
    }

    /// Sends a message to a room; returns the sequence number the server gave it.
    @discardableResult
    public func say(_ text: String, in room: String) async throws -> UInt64 {
        let r = Switchyard_Chat_SayRequest.with { $0.room = room; $0.text = text }
        return try await request(.sayRequest, r, Switchyard_Chat_SayReply.self).sequence
    }

    /// Sends a private message to an online user.
    public func msg(to user: String, _ text: String) async throws {
        let r = Switchyard_Chat_PrivateMessageRequest.with { $0.to = user; $0.text = text }
        _ = try await request(.privateMessageRequest, r, Switchyard_Chat_PrivateMessageReply.self)
    }

    /// Adds a friend (both ways).
    public func addFriend(_ name: String) async throws {
        _ = try await request(.friendAddRequest, Switchyard_Chat_FriendAddRequest.with { $0.name = name },
                              Switchyard_Chat_FriendAddReply.self)
    }

    /// The friends, with whether each is online.
    public func friends() async throws -> [Switchyard_Chat_Friend] {
        try await request(.friendListRequest, Switchyard_Chat_FriendListRequest(),
                          Switchyard_Chat_FriendListReply.self).friends
    }

    /// Closes the connection (after flushing) and stops the heartbeats; `events` ends. Returns once it is closed.
    public func close() async {
        framed.disconnect()
        await receiver.waitClosed()
    }
}

/// A chat request: it carries the id its reply echoes.
protocol ChatRequestMessage: SwiftProtobuf.Message {
    var requestID: UInt32 { get set }
}

/// A chat reply: it carries the request's status.
protocol ChatReplyMessage: SwiftProtobuf.Message {
    var status: Switchyard_Chat_Status { get set }
}

extension Switchyard_Chat_RegisterRequest: ChatRequestMessage {}
extension Switchyard_Chat_LoginRequest: ChatRequestMessage {}
extension Switchyard_Chat_JoinRequest: ChatRequestMessage {}
extension Switchyard_Chat_LeaveRequest: ChatRequestMessage {}
extension Switchyard_Chat_ListRoomsRequest: ChatRequestMessage {}
extension Switchyard_Chat_SayRequest: ChatRequestMessage {}
extension Switchyard_Chat_PrivateMessageRequest: ChatRequestMessage {}
extension Switchyard_Chat_FriendAddRequest: ChatRequestMessage {}
extension Switchyard_Chat_FriendListRequest: ChatRequestMessage {}
extension Switchyard_Chat_RegisterReply: ChatReplyMessage {}
extension Switchyard_Chat_LoginReply: ChatReplyMessage {}
extension Switchyard_Chat_JoinReply: ChatReplyMessage {}
extension Switchyard_Chat_LeaveReply: ChatReplyMessage {}
extension Switchyard_Chat_ListRoomsReply: ChatReplyMessage {}
extension Switchyard_Chat_SayReply: ChatReplyMessage {}
extension Switchyard_Chat_PrivateMessageReply: ChatReplyMessage {}
extension Switchyard_Chat_FriendAddReply: ChatReplyMessage {}
extension Switchyard_Chat_FriendListReply: ChatReplyMessage {}
