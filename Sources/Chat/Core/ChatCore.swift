import Logging

/// The chat rules with no I/O, no locks and no clock: sessions by connection id, who is online, the friends of
/// online users, rooms and their members, rate limits, the login throttle and slow-consumer cut-offs.
///
/// Every input is a method that takes connection ids (`ChatPeer`) and, where time matters, `now` (monotonic
/// nanoseconds) or the wall-clock stamp for messages; it changes the state and returns what to do, in order
/// (`ChatAction`). Storage and the password KDF are actions too: the shell runs them and feeds their outcome back
/// (`registered`, `loginVerified`, `historyLoaded`, `friendshipStored`).
///
/// ```
///  request --> ChatCore.login --> [.verifyLogin(job)] --(shell: storage + KDF)--> ChatCore.loginVerified
///                                                                      --> [.send(reply), .send(presence), ...]
/// ```
///
/// A value type: the shell (`ChatHub`) keeps it behind one lock; tests drive it directly with a mock clock.
struct ChatCore: Sendable {
    let configuration: ChatConfiguration
    var sessions: [UInt64: ChatSession] = [:]
    /// User name -> connection id of its session.
    var online: [String: UInt64] = [:]
    /// Friends of each online user (loaded at login).
    var friends: [String: Set<String>] = [:]
    /// Rooms in memory: those with members, and those a history load is under way for. A room with neither is
    /// freed (its history stays in the database and is loaded again on the next join).
    var rooms: [String: ChatRoom] = [:]
    /// History loads in progress, by room.
    var loadsInFlight: [String: Int] = [:]
    /// Requests waiting for storage or the KDF, by source address (absent: none).
    var jobsBySource: [UInt32: Int] = [:]
    /// Sources refused for too many requests in flight since their count was last zero (one log line each).
    var busySources: Set<UInt32> = []
    private var throttle: LoginThrottle
    private var registrations: SourceRateLimiter?

    init(configuration: ChatConfiguration) {
        self.configuration = configuration
        throttle = LoginThrottle(maxFailures: configuration.maxLoginFailures, window: configuration.loginFailureWindow,
                                 maxLockout: configuration.maxLoginLockout)
        registrations = configuration.registrationsPerMinute.map {
            SourceRateLimiter(perMinute: $0, burst: configuration.registrationBurst)
        }
    }

    // MARK: Queries

    /// Logged-in users, sorted.
    var onlineUsers: [String] { online.keys.sorted() }

    /// Members of a room right now (0 when unknown).
    func memberCount(of room: String) -> Int { rooms[room]?.members.count ?? 0 }

    /// True when a connection with this much queued output is a slow consumer: the shell checks this after each
    /// delivery (no lock needed: it reads the configuration only) and then calls `outputBacklogged`.
    func isBacklogged(queuedBytes: Int) -> Bool { queuedBytes > configuration.maxQueuedOutputBytes }

    // MARK: Connections

    /// A connection opened at `now`.
    mutating func connected(_ peer: ChatPeer, now: UInt64) -> [ChatAction] {
        sessions[peer.id] = ChatSession(peer: peer, tokens: Double(configuration.messagesPerSecond), now: now)
        return [.count(.connection, 1)]
    }

    /// A connection closed: it leaves its rooms, and a logged-in user goes offline (its online friends are told).
    mutating func closed(_ id: UInt64) -> [ChatAction] {
        guard let session = sessions.removeValue(forKey: id) else { return [] }
        for name in session.rooms { removeMember(session.peer, from: name) }
        guard let user = session.user, online[user] == id else { return [] }
        online[user] = nil
        let friends = self.friends.removeValue(forKey: user) ?? []
        var actions: [ChatAction] = []
        announcePresence(user, online: false, to: friends, into: &actions)
        return actions
    }

    /// `id`'s queued output is `queuedBytes` after a delivery. Past the limit (the first time), it leaves every
    /// room and is cut off: the others never wait for it.
    mutating func outputBacklogged(_ id: UInt64, queuedBytes: Int) -> [ChatAction] {
        guard isBacklogged(queuedBytes: queuedBytes), var session = sessions[id], !session.cutOff else { return [] }
        session.cutOff = true
        for name in session.rooms { removeMember(session.peer, from: name) }
        session.rooms = []
        sessions[id] = session
        var notice = Switchyard_Chat_Notice()
        notice.status = Switchyard_Chat_Status(
            .slowConsumer, "output queue passed \(configuration.maxQueuedOutputBytes) bytes; disconnecting")
        return [
            .count(.slowConsumerCutOff, 1),
            .log(.info, "slow consumer cut off", [
                "connection.id": "\(id)", "connection.queued_bytes": "\(queuedBytes)"]),
            .cutOff(session.peer, notice: ChatFrame(notice, id: .notice), grace: configuration.slowConsumerGrace),
        ]
    }

    // MARK: Users

    mutating func register(_ r: Switchyard_Chat_RegisterRequest, from peer: ChatPeer, now: UInt64) -> [ChatAction] {
        var reply = Switchyard_Chat_RegisterReply()
        reply.requestID = r.requestID
        guard Self.isValidUserName(r.name) else {
            reply.status = Switchyard_Chat_Status(.badRequest, "names are 1-32 letters, digits, '_', '-' or '.'")
            return [.send(ChatFrame(reply, id: .registerReply), to: peer),
                    Self.refusalLog("register", peer, reply.status)]
        }
        guard Self.isValidPassword(r.password) else {
            reply.status = Switchyard_Chat_Status(.badRequest, "passwords are 1-1024 bytes")
            return [.send(ChatFrame(reply, id: .registerReply), to: peer),
                    Self.refusalLog("register", peer, reply.status)]
        }
        var actions: [ChatAction] = []
        if let status = startJob(for: peer, into: &actions) {
            reply.status = status
            return actions + [.send(ChatFrame(reply, id: .registerReply), to: peer),
                              Self.refusalLog("register", peer, status)]
        }
        if registrations?.take(peer.source, now: now) == false {
            endJob(for: peer)
            reply.status = Switchyard_Chat_Status(.rateLimited, "too many registrations from this address; try later")
            return [.count(.registrationRateLimited, 1), .send(ChatFrame(reply, id: .registerReply), to: peer),
                    Self.refusalLog("register", peer, reply.status)]
        }
        return [.register(RegisterJob(peer: peer, requestID: r.requestID, name: r.name, password: r.password,
                                      iterations: configuration.passwordIterations))]
    }

    mutating func registered(_ job: RegisterJob, _ outcome: RegisterOutcome) -> [ChatAction] {
        endJob(for: job.peer)
        var reply = Switchyard_Chat_RegisterReply()
        reply.requestID = job.requestID
        switch outcome {
        case .created: reply.status = .ok
        case .nameTaken: reply.status = Switchyard_Chat_Status(.nameTaken, "the name '\(job.name)' is taken")
        case .failed: reply.status = Self.internalError
        }
        return [.send(ChatFrame(reply, id: .registerReply), to: job.peer)]
    }

    mutating func login(_ r: Switchyard_Chat_LoginRequest, from peer: ChatPeer, now: UInt64) -> [ChatAction] {
        func fail(_ status: Switchyard_Chat_Status) -> [ChatAction] {
            var reply = Switchyard_Chat_LoginReply()
            reply.requestID = r.requestID
            reply.status = status
            return [.send(ChatFrame(reply, id: .loginReply), to: peer), Self.refusalLog("login", peer, status)]
        }
        guard Self.isValidUserName(r.name), Self.isValidPassword(r.password) else {
            return fail(Self.invalidCredentials)
        }
        guard var session = sessions[peer.id] else { return fail(Self.internalError) }
        if let user = session.user {
            return fail(Switchyard_Chat_Status(.alreadyLoggedIn, "this connection is logged in as \(user)"))
        }
        if session.loginPending { return fail(Switchyard_Chat_Status(.badRequest, "a login is in progress")) }
        var actions: [ChatAction] = []
        if let status = startJob(for: peer, into: &actions) { return actions + fail(status) }
        // Counted before the hash: attempts in flight count against the limit of the (name, source) pair.
        guard throttle.begin(LoginThrottle.Key(name: r.name, source: peer.source), now: now) else {
            endJob(for: peer)
            return fail(Switchyard_Chat_Status(.rateLimited, "too many failed logins for this name; try again later"))
        }
        session = sessions[peer.id] ?? session
        session.loginPending = true
        sessions[peer.id] = session
        return [.verifyLogin(LoginJob(peer: peer, requestID: r.requestID, name: r.name, password: r.password))]
    }

    mutating func loginVerified(_ job: LoginJob, _ outcome: LoginOutcome, now: UInt64) -> [ChatAction] {
        endJob(for: job.peer)
        var actions: [ChatAction] = []
        var status: Switchyard_Chat_Status?
        let key = LoginThrottle.Key(name: job.name, source: job.peer.source)
        switch outcome {
        case .verified:
            throttle.end(key, .succeeded, now: now)
        case .failed(let passwordVerified):
            throttle.end(key, passwordVerified ? .succeeded : .aborted, now: now)
            status = Self.internalError
        case .invalidCredentials:
            actions.append(.count(.failedLogin, 1))
            if throttle.end(key, .failed, now: now) {
                actions.append(.log(.info, "login locked after failed attempts (for this name from this address)", [
                    "user.name": "\(job.name)", "connection.id": "\(job.peer.id)",
                    "peer.address": "\(Self.dottedQuad(job.peer.source))"]))
            }
            status = Self.invalidCredentials
        }
        guard var session = sessions[job.peer.id] else { return actions }  // closed meanwhile
        session.loginPending = false
        defer { sessions[job.peer.id] = session }
        if status == nil, online[job.name] != nil {
            status = Switchyard_Chat_Status(.alreadyLoggedIn, "\(job.name) is logged in on another connection")
        }
        var reply = Switchyard_Chat_LoginReply()
        reply.requestID = job.requestID
        if let status {
            reply.status = status
            actions.append(.send(ChatFrame(reply, id: .loginReply), to: job.peer))
            actions.append(Self.refusalLog("login", job.peer, status))
            return actions
        }
        guard case .verified(let friends, let token) = outcome else { return actions }
        session.user = job.name
        online[job.name] = job.peer.id
        self.friends[job.name] = friends
        reply.status = .ok
        reply.token = token
        actions.append(.send(ChatFrame(reply, id: .loginReply), to: job.peer))
        actions.append(.count(.login, 1))
        announcePresence(job.name, online: true, to: friends, into: &actions)
        return actions
    }

    // MARK: Requests in flight

    /// nil when `peer` may start one more request that needs storage or the KDF (now counted until `endJob`); else
    /// the busy status to reply at once (counted; one log line per source and episode).
    mutating func startJob(for peer: ChatPeer, into actions: inout [ChatAction]) -> Switchyard_Chat_Status? {
        guard var session = sessions[peer.id] else { return Self.internalError }
        let fromSource = jobsBySource[peer.source, default: 0]
        let status: Switchyard_Chat_Status
        if session.jobsInFlight >= configuration.maxRequestsInFlightPerConnection {
            status = Switchyard_Chat_Status(.rateLimited, "busy: \(session.jobsInFlight) requests of this connection "
                + "are in progress; wait for their replies")
        } else if fromSource >= configuration.maxRequestsInFlightPerSource {
            status = Switchyard_Chat_Status(.rateLimited, "busy: \(fromSource) requests from this address are in "
                + "progress; try again")
        } else {
            session.jobsInFlight += 1
            sessions[peer.id] = session
            jobsBySource[peer.source] = fromSource + 1
            return nil
        }
        actions.append(.count(.busyRejection, 1))
        if busySources.insert(peer.source).inserted {
            actions.append(.log(.info, "requests refused as busy: too many in progress on a connection or address", [
                "peer.address": "\(Self.dottedQuad(peer.source))", "connection.id": "\(peer.id)",
                "chat.requests_in_flight": "\(fromSource)"]))
        }
        return status
    }

    /// A request begun with `startJob` is done (its connection may have closed meanwhile).
    mutating func endJob(for peer: ChatPeer) {
        if let n = sessions[peer.id]?.jobsInFlight, n > 0 { sessions[peer.id]?.jobsInFlight = n - 1 }
        let left = jobsBySource[peer.source, default: 1] - 1
        if left > 0 {
            jobsBySource[peer.source] = left
        } else {
            jobsBySource[peer.source] = nil
            busySources.remove(peer.source)  // the episode ends
        }
    }

    static func dottedQuad(_ ip: UInt32) -> String {
        "\(ip >> 24).\((ip >> 16) & 0xFF).\((ip >> 8) & 0xFF).\(ip & 0xFF)"
    }

    // MARK: Checks

    static func isValidUserName(_ name: String) -> Bool {
        guard (1...32).contains(name.utf8.count) else { return false }
        return name.unicodeScalars.allSatisfy { s in
            (s >= "a" && s <= "z") || (s >= "A" && s <= "Z") || (s >= "0" && s <= "9") || s == "_" || s == "-"
                || s == "."
        }
    }

    static func isValidPassword(_ password: String) -> Bool {
        !password.isEmpty && password.utf8.count <= 1024
    }

    /// nil when fine, else the status to reply (a limit adds a `.limitRejection` count to `actions`).
    func checkRoomName(_ room: String, into actions: inout [ChatAction]) -> Switchyard_Chat_Status? {
        if room.isEmpty { return Switchyard_Chat_Status(.badRequest, "room name is empty") }
        if room.utf8.count > configuration.maxRoomNameBytes {
            actions.append(.count(.limitRejection, 1))
            return Switchyard_Chat_Status(
                .limitExceeded, "room name longer than \(configuration.maxRoomNameBytes) bytes (UTF-8)")
        }
        if room.unicodeScalars.contains(where: { $0.properties.isWhitespace || $0.value < 0x20 || $0.value == 0x7F }) {
            return Switchyard_Chat_Status(.badRequest, "room name contains spaces or control characters")
        }
        return nil
    }

    /// nil when fine, else the status to reply (a limit adds a `.limitRejection` count to `actions`).
    func checkText(_ text: String, into actions: inout [ChatAction]) -> Switchyard_Chat_Status? {
        if text.isEmpty { return Switchyard_Chat_Status(.badRequest, "message is empty") }
        if text.utf8.count > configuration.maxMessageBytes {
            actions.append(.count(.limitRejection, 1))
            return Switchyard_Chat_Status(.limitExceeded, "message longer than \(configuration.maxMessageBytes) bytes")
        }
        return nil
    }

    /// A debug line for a refused request (a peer can trigger any number of them).
    static func refusalLog(_ request: String, _ peer: ChatPeer, _ status: Switchyard_Chat_Status) -> ChatAction {
        .log(.debug, "request refused", [
            "chat.request": "\(request)", "connection.id": "\(peer.id)", "chat.status": "\(status.code)"])
    }

    /// The first checks of a message (room or private): its text, then a logged-in sender. The sender's session
    /// and name.
    func messageSender(_ text: String, _ peer: ChatPeer, into actions: inout [ChatAction]) throws(ChatRefusal)
        -> (ChatSession, String)
    {
        if let status = checkText(text, into: &actions) { throw ChatRefusal(status) }
        guard let session = sessions[peer.id], let user = session.user else { throw ChatRefusal(Self.notLoggedIn) }
        return (session, user)
    }

    /// Takes one of the sender's message tokens (``ChatConfiguration/messagesPerSecond``) and keeps the session;
    /// with none left, the refusal (counted).
    mutating func takeMessageToken(_ session: inout ChatSession, of peer: ChatPeer, now: UInt64,
                                   into actions: inout [ChatAction]) throws(ChatRefusal) {
        let allowed = session.takeToken(now: now, rate: Double(configuration.messagesPerSecond))
        sessions[peer.id] = session
        guard allowed else {
            actions.append(.count(.limitRejection, 1))
            throw ChatRefusal(.rateLimited, "more than \(configuration.messagesPerSecond) messages per second")
        }
    }

    /// A refused request: `actions` so far, then `reply` with `status` to the sender and the refusal's log line.
    static func refused<Reply: ChatReplyMessage>(_ reply: Reply, _ status: Switchyard_Chat_Status, id: ChatMessageID,
                                                 _ request: String, _ peer: ChatPeer, after actions: [ChatAction])
        -> [ChatAction]
    {
        var reply = reply
        reply.status = status
        return actions + [.send(ChatFrame(reply, id: id), to: peer), refusalLog(request, peer, status)]
    }

    static let notLoggedIn = Switchyard_Chat_Status(.notLoggedIn, "log in first")
    static let internalError = Switchyard_Chat_Status(.internalError, "storage error; try again")
    static let invalidCredentials = Switchyard_Chat_Status(.invalidCredentials, "invalid name or password")
}

/// Why a request is refused: the status its reply carries.
struct ChatRefusal: Error {
    var status: Switchyard_Chat_Status

    init(_ status: Switchyard_Chat_Status) { self.status = status }
    init(_ code: Switchyard_Chat_StatusCode, _ reason: String) { status = Switchyard_Chat_Status(code, reason) }
}
