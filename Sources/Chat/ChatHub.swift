#if canImport(Glibc)
import Glibc
#endif
import Logging
import Messaging
import Reactor
import SwiftProtobuf
import Synchronization

/// Counters of a chat server. Safe to read from any thread.
public final class ChatStatistics: Sendable {
    let delivered = Atomic<Int>(0)
    let slowConsumers = Atomic<Int>(0)
    let loginFailures = Atomic<Int>(0)
    let limitErrors = Atomic<Int>(0)

    /// Room and private messages written to members' connections.
    public var messagesDelivered: Int { delivered.load(ordering: .relaxed) }
    /// Connections cut off because their output queue passed `maxQueuedOutputBytes`.
    public var slowConsumersDisconnected: Int { slowConsumers.load(ordering: .relaxed) }
    /// Logins refused for a wrong name or password (rate-limited attempts not included).
    public var failedLogins: Int { loginFailures.load(ordering: .relaxed) }
    /// Requests refused by a limit (size, rate, rooms per user, room name length).
    public var limitRejections: Int { limitErrors.load(ordering: .relaxed) }
}

/// One connection's chat session.
struct ChatSession {
    let connection: TCPConnection
    var user: String?
    var rooms: Set<String> = []
    var tokens: Double
    var lastRefill: UInt64
    var cutOff = false
    var loginPending = false

    /// Token bucket of `rate` messages per second (burst `rate`).
    mutating func takeToken(now: UInt64, rate: Double) -> Bool {
        let elapsed = Double(now &- lastRefill) / 1e9
        tokens = min(rate, tokens + elapsed * rate)
        lastRefill = now
        if tokens >= 1 {
            tokens -= 1
            return true
        }
        return false
    }
}

/// One room: members grouped by the loop their connection lives on (one delivery task per loop per message),
/// the last sequence number and the in-memory tail of its history.
struct ChatRoom {
    struct LoopMembers {
        let loop: EventLoop
        var connections: [UInt64: TCPConnection] = [:]
    }

    var byLoop: [ObjectIdentifier: LoopMembers] = [:]
    var memberCount = 0
    var lastSequence: UInt64
    var history: [Switchyard_Chat_RoomMessage]

    init(lastSequence: UInt64, history: [Switchyard_Chat_RoomMessage]) {
        self.lastSequence = lastSequence
        self.history = history
    }

    mutating func add(_ c: TCPConnection) {
        let key = ObjectIdentifier(c.loop)
        var group = byLoop[key] ?? LoopMembers(loop: c.loop)
        if group.connections.updateValue(c, forKey: c.id) == nil { memberCount += 1 }
        byLoop[key] = group
    }

    mutating func remove(_ c: TCPConnection) {
        let key = ObjectIdentifier(c.loop)
        guard var group = byLoop[key], group.connections.removeValue(forKey: c.id) != nil else { return }
        memberCount -= 1
        byLoop[key] = group.connections.isEmpty ? nil : group
    }

    mutating func record(_ m: Switchyard_Chat_RoomMessage, keep: Int) {
        guard keep > 0 else { return }
        history.append(m)
        if history.count > keep { history.removeFirst(history.count - keep) }
    }
}

/// The chat state and its rules: sessions, who is online, friends of online users, rooms.
///
/// Threads: all of it lives behind one Mutex (`state`); handlers on any I/O loop and the login/join tasks take it
/// briefly. Frames for other connections are posted with `loop.execute` **while the lock is held**, so every
/// connection receives frames in the order the lock serialized them (room messages in sequence order). The lock
/// is never held while calling into a connection directly (a direct send could close it and re-enter `onClose`).
/// Delivery tasks run on the receiver's loop, check its queued output after each send and cut off a slow
/// consumer. Storage and the password KDF run in tasks, off the loops.
final class ChatHub: Sendable {
    struct State {
        var sessions: [UInt64: ChatSession] = [:]
        /// User name -> connection id of its session.
        var online: [String: UInt64] = [:]
        /// Friends of each online user (loaded at login).
        var friends: [String: Set<String>] = [:]
        var rooms: [String: ChatRoom] = [:]
    }

    let configuration: ChatConfiguration
    let store: ChatStore
    let writer: HistoryWriter
    let throttle: LoginThrottle
    let statistics = ChatStatistics()
    let logger: Logger
    let state = Mutex(State())
    /// A salt for hashing against when the user does not exist, so both failures take the same time.
    let decoySalt = PasswordHasher.makeSalt()

    init(configuration: ChatConfiguration, store: ChatStore) {
        self.configuration = configuration
        self.store = store
        self.logger = configuration.logger
        writer = HistoryWriter(store: store, logger: configuration.logger)
        throttle = LoginThrottle(maxFailures: configuration.maxLoginFailures, window: configuration.loginFailureWindow)
    }

    // MARK: Delivery

    /// Posts a frame to one connection's loop (in lock order when called under the lock). Safe from any thread.
    func post<M: SwiftProtobuf.Message>(_ message: M, id: ChatMessageID, to c: TCPConnection) {
        guard let body: [UInt8] = try? message.serializedBytes() else { return }
        post(body: body, id: id, to: [c], on: c.loop)
    }

    /// Posts one frame to several connections of one loop: one task, one encoding. Safe from any thread.
    func post(body: [UInt8], id: ChatMessageID, to connections: [TCPConnection], on loop: EventLoop) {
        let bound = configuration.maxQueuedOutputBytes
        loop.execute { [self] in
            body.withUnsafeBytes { raw in
                for c in connections where c.isActive {
                    c.sendFrame(messageID: id.rawValue, body: raw)
                    if c.queuedOutputBytes > bound { cutOffInLoop(c) }
                }
            }
        }
    }

    /// Loop thread of `c`: the connection did not drain; leave every room, send a notice, close (hard after the
    /// grace period). The others never wait for it.
    func cutOffInLoop(_ c: TCPConnection) {
        let first = state.withLock { s -> Bool in
            guard var session = s.sessions[c.id], !session.cutOff else { return false }
            session.cutOff = true
            for name in session.rooms { s.rooms[name]?.remove(c) }
            session.rooms = []
            s.sessions[c.id] = session
            return true
        }
        guard first else { return }
        statistics.slowConsumers.wrappingAdd(1, ordering: .relaxed)
        logger.info("slow consumer cut off", metadata: [
            "connection.id": "\(c.id)", "peer": "\(c.peerAddress)", "queued": "\(c.queuedOutputBytes)"])
        var notice = Switchyard_Chat_Notice()
        notice.status = Switchyard_Chat_Status(.slowConsumer, "output queue passed \(configuration.maxQueuedOutputBytes) bytes; disconnecting")
        c.send(notice, id: ChatMessageID.notice)
        c.close()
        c.loop.schedule(after: configuration.slowConsumerGrace) { c.forceClose() }
    }

    // MARK: Connections

    /// Loop thread of `c`.
    func connected(_ c: TCPConnection) {
        let rate = Double(configuration.messagesPerSecond)
        let now = SystemInfo.monotonicNanoseconds()
        state.withLock { $0.sessions[c.id] = ChatSession(connection: c, tokens: rate, lastRefill: now) }
    }

    /// Loop thread of `c`: leaves the rooms, and a logged-in user goes offline (its online friends are told).
    func disconnected(_ c: TCPConnection) {
        state.withLock { s in
            guard let session = s.sessions.removeValue(forKey: c.id) else { return }
            for name in session.rooms { s.rooms[name]?.remove(c) }
            guard let user = session.user, s.online[user] == c.id else { return }
            s.online[user] = nil
            let friends = s.friends.removeValue(forKey: user) ?? []
            announcePresenceLocked(user, online: false, to: friends, state: &s)
        }
    }

    // MARK: Validation

    static func isValidUserName(_ name: String) -> Bool {
        let count = name.unicodeScalars.count
        guard count >= 1 && count <= 32 else { return false }
        return name.unicodeScalars.allSatisfy { s in
            (s >= "a" && s <= "z") || (s >= "A" && s <= "Z") || (s >= "0" && s <= "9") || s == "_" || s == "-" || s == "."
        }
    }

    /// nil when fine, else the status to reply.
    func checkRoomName(_ room: String) -> Switchyard_Chat_Status? {
        if room.isEmpty { return Switchyard_Chat_Status(.badRequest, "room name is empty") }
        if room.count > configuration.maxRoomNameLength {
            statistics.limitErrors.wrappingAdd(1, ordering: .relaxed)
            return Switchyard_Chat_Status(.limitExceeded, "room name longer than \(configuration.maxRoomNameLength) characters")
        }
        if room.unicodeScalars.contains(where: { $0.properties.isWhitespace || $0.value < 0x20 || $0.value == 0x7F }) {
            return Switchyard_Chat_Status(.badRequest, "room name contains spaces or control characters")
        }
        return nil
    }

    func checkText(_ text: String) -> Switchyard_Chat_Status? {
        if text.isEmpty { return Switchyard_Chat_Status(.badRequest, "message is empty") }
        if text.utf8.count > configuration.maxMessageBytes {
            statistics.limitErrors.wrappingAdd(1, ordering: .relaxed)
            return Switchyard_Chat_Status(.limitExceeded, "message longer than \(configuration.maxMessageBytes) bytes")
        }
        return nil
    }

    static func unixMilliseconds() -> Int64 {
        var ts = timespec()
        clock_gettime(CLOCK_REALTIME, &ts)
        return Int64(ts.tv_sec) * 1000 + Int64(ts.tv_nsec) / 1_000_000
    }

    static let notLoggedIn = Switchyard_Chat_Status(.notLoggedIn, "log in first")
    static let internalError = Switchyard_Chat_Status(.internalError, "storage error; try again")
    static let invalidCredentials = Switchyard_Chat_Status(.invalidCredentials, "invalid name or password")
}
