import LarsWire
import Messaging
import Reactor
import SwiftProtobuf
import Synchronization

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

/// An async/await client of the chat server, on `AsyncFrameClient`.
///
/// Requests await their reply (matched by request id, with a timeout) and throw `ChatClientError.refused` with
/// the server's status when it says no. Pushed frames come out of `events`, in order; the stream is unbounded
/// (the client keeps reading however slowly the events are consumed) and ends when the connection closes.
/// Heartbeats are sent every `heartbeatInterval` so the server's idle timeout keeps a quiet client online.
/// Safe to use from any task.
public final class ChatClient: Sendable {
    private struct Pending {
        var nextID: UInt32 = 1
        var waiters: [UInt32: CheckedContinuation<InboundFrame, Error>] = [:]
        var closed = false
    }

    private let frames: AsyncFrameClient
    private let pending = Mutex(Pending())
    private let requestTimeout: Duration
    private let tasks = Mutex<[Task<Void, Never>]>([])
    /// The pushed events, in arrival order; ends when the connection closes.
    public let events: AsyncStream<ChatEvent>
    private let eventSink: AsyncStream<ChatEvent>.Continuation

    private init(frames: AsyncFrameClient, requestTimeout: Duration) {
        self.frames = frames
        self.requestTimeout = requestTimeout
        (events, eventSink) = AsyncStream.makeStream(of: ChatEvent.self, bufferingPolicy: .unbounded)
    }

    /// Connects to a chat server.
    ///
    /// - Parameters:
    ///   - heartbeatInterval: How often to send a heartbeat; nil sends none (the server's idle timeout then
    ///     closes the connection once the client falls silent).
    ///   - requestTimeout: How long a request waits for its reply.
    public static func connect(
        host: String = "127.0.0.1", port: Int, loop: EventLoop, heartbeatInterval: Duration? = .seconds(5),
        requestTimeout: Duration = .seconds(10)
    ) async throws -> ChatClient {
        let frames = try await AsyncFrameClient.connect(host: host, port: port, loop: loop, bufferCapacity: 1024)
        let client = ChatClient(frames: frames, requestTimeout: requestTimeout)
        client.startReading()
        if let heartbeatInterval { client.startHeartbeats(every: heartbeatInterval) }
        return client
    }

    private func startReading() {
        let task = Task { [self] in
            do {
                for try await frame in frames.frames { handle(frame) }
            } catch {}
            finish()
        }
        tasks.withLock { $0.append(task) }
    }

    private func startHeartbeats(every interval: Duration) {
        let task = Task { [frames] in
            while !Task.isCancelled {
                do {
                    try await Task.sleep(for: interval)
                    try await frames.send(messageID: ReservedMessageID.heartbeat, body: [])
                } catch {
                    return
                }
            }
        }
        tasks.withLock { $0.append(task) }
    }

    private func handle(_ frame: InboundFrame) {
        switch ChatMessageID(rawValue: frame.messageID) {
        case ChatMessageID.roomMessage:
            if let m = try? frame.decode(as: Switchyard_Chat_RoomMessage.self) { eventSink.yield(.roomMessage(m)) }
        case ChatMessageID.privateMessage:
            if let m = try? frame.decode(as: Switchyard_Chat_PrivateMessage.self) { eventSink.yield(.privateMessage(m)) }
        case ChatMessageID.presenceEvent:
            if let m = try? frame.decode(as: Switchyard_Chat_PresenceEvent.self) {
                eventSink.yield(.presence(user: m.user, online: m.online))
            }
        case ChatMessageID.notice:
            if let m = try? frame.decode(as: Switchyard_Chat_Notice.self) { eventSink.yield(.notice(m.status)) }
        default:
            // Every reply has `uint32 request_id = 1`: read it through a message that has only that field.
            guard let header = try? frame.decode(as: Switchyard_Chat_ListRoomsRequest.self) else { return }
            let waiter = pending.withLock { $0.waiters.removeValue(forKey: header.requestID) }
            waiter?.resume(returning: frame)
        }
    }

    private func finish() {
        let waiters = pending.withLock { p -> [CheckedContinuation<InboundFrame, Error>] in
            p.closed = true
            defer { p.waiters = [:] }
            return Array(p.waiters.values)
        }
        for w in waiters { w.resume(throwing: ChatClientError.closed) }
        eventSink.finish()
    }

    /// Sends a request with a fresh request id and waits for the frame that answers it.
    private func request<Reply: SwiftProtobuf.Message>(
        _ id: ChatMessageID, _ replyType: Reply.Type, _ build: (UInt32) -> [UInt8]?
    ) async throws -> Reply {
        let requestID = pending.withLock { p -> UInt32 in
            defer { p.nextID = p.nextID &+ 1 == 0 ? 1 : p.nextID &+ 1 }
            return p.nextID
        }
        guard let body = build(requestID) else { throw ChatClientError.badReply("request did not encode") }
        let timeout = requestTimeout
        let timer = Task { [self] in
            try? await Task.sleep(for: timeout)
            if Task.isCancelled { return }
            let w = pending.withLock { $0.waiters.removeValue(forKey: requestID) }
            w?.resume(throwing: ChatClientError.timeout)
        }
        defer { timer.cancel() }
        let frame = try await withCheckedThrowingContinuation { (c: CheckedContinuation<InboundFrame, Error>) in
            let closed = pending.withLock { p -> Bool in
                if p.closed { return true }
                p.waiters[requestID] = c
                return false
            }
            if closed { return c.resume(throwing: ChatClientError.closed) }
            Task {
                do {
                    try await frames.send(messageID: id.rawValue, body: body)
                } catch {
                    let w = pending.withLock { $0.waiters.removeValue(forKey: requestID) }
                    w?.resume(throwing: ChatClientError.closed)
                }
            }
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
        let reply = try await request(ChatMessageID.privateMessageRequest, Switchyard_Chat_PrivateMessageReply.self) { rid in
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

    /// Closes the connection (after flushing) and stops the heartbeats; `events` ends.
    public func close() async {
        let running = tasks.withLock { $0 }
        for t in running where t != running.first { t.cancel() }
        await frames.close()
        await running.first?.value
    }
}
