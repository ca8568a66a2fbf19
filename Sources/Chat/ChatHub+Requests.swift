import Messaging
import Reactor
import SwiftProtobuf

/// The request handlers. Each runs on the requester's loop; register, login, friend add and the first join of a
/// room continue in a task (storage, the KDF) and reply from there. Every request gets a reply with a status.
extension ChatHub {
    // MARK: Users

    func register(_ r: Switchyard_Chat_RegisterRequest, from c: TCPConnection) {
        var reply = Switchyard_Chat_RegisterReply()
        reply.requestID = r.requestID
        guard Self.isValidUserName(r.name) else {
            reply.status = Switchyard_Chat_Status(.badRequest, "names are 1-32 letters, digits, '_', '-' or '.'")
            c.send(reply, id: ChatMessageID.registerReply); return
        }
        guard !r.password.isEmpty, r.password.utf8.count <= 1024 else {
            reply.status = Switchyard_Chat_Status(.badRequest, "passwords are 1-1024 bytes")
            c.send(reply, id: ChatMessageID.registerReply); return
        }
        let iterations = configuration.passwordIterations
        Task { [self] in
            do {
                let salt = PasswordHasher.makeSalt()
                let hash = try PasswordHasher.hash(password: r.password, salt: salt, iterations: iterations)
                let user = StoredUser(name: r.name, salt: salt, hash: hash, iterations: iterations)
                if try await store.insertUser(user, createdMs: Self.unixMilliseconds()) {
                    reply.status = .ok
                } else {
                    reply.status = Switchyard_Chat_Status(.nameTaken, "the name '\(r.name)' is taken")
                }
            } catch {
                logger.warning("register failed", metadata: ["error": "\(error)"])
                reply.status = Self.internalError
            }
            c.send(reply, id: ChatMessageID.registerReply)
        }
    }

    func login(_ r: Switchyard_Chat_LoginRequest, from c: TCPConnection) {
        var reply = Switchyard_Chat_LoginReply()
        reply.requestID = r.requestID
        func fail(_ status: Switchyard_Chat_Status) {
            reply.status = status
            c.send(reply, id: ChatMessageID.loginReply)
        }
        guard Self.isValidUserName(r.name), !r.password.isEmpty, r.password.utf8.count <= 1024 else {
            return fail(Self.invalidCredentials)
        }
        let refusal = state.withLock { s -> Switchyard_Chat_Status? in
            guard var session = s.sessions[c.id] else { return Self.internalError }
            if let user = session.user {
                return Switchyard_Chat_Status(.alreadyLoggedIn, "this connection is logged in as \(user)")
            }
            if session.loginPending { return Switchyard_Chat_Status(.badRequest, "a login is in progress") }
            session.loginPending = true
            s.sessions[c.id] = session
            return nil
        }
        if let refusal { return fail(refusal) }
        guard throttle.allows(r.name) else {
            state.withLock { $0.sessions[c.id]?.loginPending = false }
            return fail(Switchyard_Chat_Status(.rateLimited, "too many failed logins for this name; try again later"))
        }
        Task { [self] in
            var friends: Set<String> = []
            var verified = false
            var status: Switchyard_Chat_Status?
            do {
                if let user = try await store.user(named: r.name) {
                    verified = PasswordHasher.verify(password: r.password, salt: user.salt, iterations: user.iterations,
                                                     expected: user.hash)
                } else {
                    _ = PasswordHasher.verify(password: r.password, salt: decoySalt,
                                              iterations: configuration.passwordIterations, expected: [])
                }
                if verified {
                    throttle.reset(r.name)
                    friends = try await store.friends(of: r.name)
                } else {
                    throttle.recordFailure(r.name)
                    statistics.loginFailures.wrappingAdd(1, ordering: .relaxed)
                    status = Self.invalidCredentials
                }
            } catch {
                logger.warning("login failed on storage", metadata: ["error": "\(error)"])
                status = Self.internalError
            }
            let token = PasswordHasher.makeToken()
            state.withLock { s in
                guard var session = s.sessions[c.id] else { return }  // closed meanwhile
                session.loginPending = false
                defer { s.sessions[c.id] = session }
                if status == nil, s.online[r.name] != nil {
                    status = Switchyard_Chat_Status(.alreadyLoggedIn, "\(r.name) is logged in on another connection")
                }
                if let status {
                    reply.status = status
                } else {
                    session.user = r.name
                    s.online[r.name] = c.id
                    s.friends[r.name] = friends
                    reply.status = .ok
                    reply.token = token
                }
                post(reply, id: ChatMessageID.loginReply, to: c)
                if reply.status.code == .ok {
                    announcePresenceLocked(r.name, online: true, to: friends, state: &s)
                }
            }
        }
    }

    // MARK: Rooms

    func join(_ r: Switchyard_Chat_JoinRequest, from c: TCPConnection) {
        var reply = Switchyard_Chat_JoinReply()
        reply.requestID = r.requestID
        reply.room = r.room
        if let status = checkRoomName(r.room) {
            reply.status = status
            c.send(reply, id: ChatMessageID.joinReply); return
        }
        enum Outcome { case done, load }
        let outcome = state.withLock { s -> Outcome in
            guard let status = joinCheckLocked(&s, room: r.room, c: c) else {
                guard s.rooms[r.room] != nil else { return .load }
                joinLocked(&s, room: r.room, c: c, reply: &reply)
                return .done
            }
            reply.status = status
            post(reply, id: ChatMessageID.joinReply, to: c)
            return .done
        }
        guard outcome == .load else { return }
        let keep = configuration.historyLength
        Task { [self] in
            let loaded: (messages: [Switchyard_Chat_RoomMessage], lastSequence: UInt64)?
            do {
                loaded = try await store.history(room: r.room, limit: keep)
            } catch {
                logger.warning("could not load room history", metadata: ["room": "\(r.room)", "error": "\(error)"])
                loaded = nil
            }
            state.withLock { s in
                if s.rooms[r.room] == nil {
                    guard let loaded else {
                        reply.status = Self.internalError
                        return post(reply, id: ChatMessageID.joinReply, to: c)
                    }
                    s.rooms[r.room] = ChatRoom(lastSequence: loaded.lastSequence, history: loaded.messages)
                }
                if let status = joinCheckLocked(&s, room: r.room, c: c) {
                    reply.status = status
                    return post(reply, id: ChatMessageID.joinReply, to: c)
                }
                joinLocked(&s, room: r.room, c: c, reply: &reply)
            }
        }
    }

    /// nil when `c` may join `room`.
    private func joinCheckLocked(_ s: inout State, room: String, c: TCPConnection) -> Switchyard_Chat_Status? {
        guard let session = s.sessions[c.id], !session.cutOff else { return Self.internalError }
        guard session.user != nil else { return Self.notLoggedIn }
        if !session.rooms.contains(room) && session.rooms.count >= configuration.maxRoomsPerUser {
            statistics.limitErrors.wrappingAdd(1, ordering: .relaxed)
            return Switchyard_Chat_Status(.limitExceeded, "at most \(configuration.maxRoomsPerUser) rooms per user")
        }
        return nil
    }

    /// Adds `c` to an existing room and posts the reply with the history (before any later room message).
    private func joinLocked(_ s: inout State, room: String, c: TCPConnection, reply: inout Switchyard_Chat_JoinReply) {
        s.sessions[c.id]?.rooms.insert(room)
        s.rooms[room]!.add(c)
        reply.status = .ok
        reply.memberCount = UInt32(s.rooms[room]!.memberCount)
        reply.history = s.rooms[room]!.history
        post(reply, id: ChatMessageID.joinReply, to: c)
    }

    func leave(_ r: Switchyard_Chat_LeaveRequest, from c: TCPConnection) {
        var reply = Switchyard_Chat_LeaveReply()
        reply.requestID = r.requestID
        reply.room = r.room
        state.withLock { s in
            guard let session = s.sessions[c.id], session.user != nil else {
                reply.status = Self.notLoggedIn
                return post(reply, id: ChatMessageID.leaveReply, to: c)
            }
            guard session.rooms.contains(r.room) else {
                reply.status = Switchyard_Chat_Status(.notInRoom, "not in room '\(r.room)'")
                return post(reply, id: ChatMessageID.leaveReply, to: c)
            }
            s.sessions[c.id]?.rooms.remove(r.room)
            s.rooms[r.room]?.remove(c)
            reply.status = .ok
            post(reply, id: ChatMessageID.leaveReply, to: c)
        }
    }

    func listRooms(_ r: Switchyard_Chat_ListRoomsRequest, from c: TCPConnection) {
        var reply = Switchyard_Chat_ListRoomsReply()
        reply.requestID = r.requestID
        reply.status = .ok
        state.withLock { s in
            reply.rooms = s.rooms.filter { $0.value.memberCount > 0 }.keys.sorted().map { name in
                var info = Switchyard_Chat_RoomInfo()
                info.name = name
                info.memberCount = UInt32(s.rooms[name]!.memberCount)
                return info
            }
            post(reply, id: ChatMessageID.listRoomsReply, to: c)
        }
    }

    // MARK: Messages

    func say(_ r: Switchyard_Chat_SayRequest, from c: TCPConnection) {
        var reply = Switchyard_Chat_SayReply()
        reply.requestID = r.requestID
        if let status = checkText(r.text) {
            reply.status = status
            c.send(reply, id: ChatMessageID.sayReply); return
        }
        let now = SystemInfo.monotonicNanoseconds()
        let rate = Double(configuration.messagesPerSecond)
        let keep = configuration.historyLength
        let stored: Switchyard_Chat_RoomMessage? = state.withLock { s in
            guard var session = s.sessions[c.id], let user = session.user else {
                reply.status = Self.notLoggedIn
                post(reply, id: ChatMessageID.sayReply, to: c)
                return nil
            }
            guard session.rooms.contains(r.room), s.rooms[r.room] != nil else {
                reply.status = Switchyard_Chat_Status(.notInRoom, "join '\(r.room)' first")
                post(reply, id: ChatMessageID.sayReply, to: c)
                return nil
            }
            let allowed = session.takeToken(now: now, rate: rate)
            s.sessions[c.id] = session
            guard allowed else {
                statistics.limitErrors.wrappingAdd(1, ordering: .relaxed)
                reply.status = Switchyard_Chat_Status(.rateLimited, "more than \(configuration.messagesPerSecond) messages per second")
                post(reply, id: ChatMessageID.sayReply, to: c)
                return nil
            }
            var m = Switchyard_Chat_RoomMessage()
            m.room = r.room
            m.sender = user
            m.text = r.text
            m.timeMs = Self.unixMilliseconds()
            s.rooms[r.room]!.lastSequence += 1
            m.sequence = s.rooms[r.room]!.lastSequence
            s.rooms[r.room]!.record(m, keep: keep)
            reply.status = .ok
            reply.sequence = m.sequence
            post(reply, id: ChatMessageID.sayReply, to: c)
            if let body: [UInt8] = try? m.serializedBytes() {
                var total = 0
                for group in s.rooms[r.room]!.byLoop.values {
                    let members = Array(group.connections.values)
                    total += members.count
                    post(body: body, id: ChatMessageID.roomMessage, to: members, on: group.loop)
                }
                statistics.delivered.wrappingAdd(total, ordering: .relaxed)
            }
            return m
        }
        if let stored { writer.append(stored) }
    }

    func privateMessage(_ r: Switchyard_Chat_PrivateMessageRequest, from c: TCPConnection) {
        var reply = Switchyard_Chat_PrivateMessageReply()
        reply.requestID = r.requestID
        if let status = checkText(r.text) {
            reply.status = status
            c.send(reply, id: ChatMessageID.privateMessageReply); return
        }
        let now = SystemInfo.monotonicNanoseconds()
        let rate = Double(configuration.messagesPerSecond)
        state.withLock { s in
            guard var session = s.sessions[c.id], let user = session.user else {
                reply.status = Self.notLoggedIn
                return post(reply, id: ChatMessageID.privateMessageReply, to: c)
            }
            guard let targetID = s.online[r.to], let target = s.sessions[targetID] else {
                reply.status = Switchyard_Chat_Status(.noSuchUser, "'\(r.to)' is not online")
                return post(reply, id: ChatMessageID.privateMessageReply, to: c)
            }
            let allowed = session.takeToken(now: now, rate: rate)
            s.sessions[c.id] = session
            guard allowed else {
                statistics.limitErrors.wrappingAdd(1, ordering: .relaxed)
                reply.status = Switchyard_Chat_Status(.rateLimited, "more than \(configuration.messagesPerSecond) messages per second")
                return post(reply, id: ChatMessageID.privateMessageReply, to: c)
            }
            var m = Switchyard_Chat_PrivateMessage()
            m.from = user
            m.to = r.to
            m.text = r.text
            m.timeMs = Self.unixMilliseconds()
            post(m, id: ChatMessageID.privateMessage, to: target.connection)
            statistics.delivered.wrappingAdd(1, ordering: .relaxed)
            reply.status = .ok
            post(reply, id: ChatMessageID.privateMessageReply, to: c)
        }
    }

    // MARK: Friends

    func addFriend(_ r: Switchyard_Chat_FriendAddRequest, from c: TCPConnection) {
        var reply = Switchyard_Chat_FriendAddReply()
        reply.requestID = r.requestID
        let me = state.withLock { $0.sessions[c.id]?.user }
        guard let me else {
            reply.status = Self.notLoggedIn
            c.send(reply, id: ChatMessageID.friendAddReply); return
        }
        guard Self.isValidUserName(r.name), r.name != me else {
            reply.status = Switchyard_Chat_Status(.badRequest, "not a name you can add")
            c.send(reply, id: ChatMessageID.friendAddReply); return
        }
        Task { [self] in
            do {
                guard try await store.user(named: r.name) != nil else {
                    reply.status = Switchyard_Chat_Status(.noSuchUser, "no user '\(r.name)'")
                    c.send(reply, id: ChatMessageID.friendAddReply); return
                }
                try await store.addFriendship(me, r.name)
            } catch {
                logger.warning("friend add failed on storage", metadata: ["error": "\(error)"])
                reply.status = Self.internalError
                c.send(reply, id: ChatMessageID.friendAddReply); return
            }
            state.withLock { s in
                s.friends[me]?.insert(r.name)
                s.friends[r.name]?.insert(me)
                reply.status = .ok
                post(reply, id: ChatMessageID.friendAddReply, to: c)
                // Each learns the other is online right away.
                if s.online[r.name] != nil, s.online[me] == c.id {
                    announcePresenceLocked(r.name, online: true, to: [me], state: &s)
                    announcePresenceLocked(me, online: true, to: [r.name], state: &s)
                }
            }
        }
    }

    func listFriends(_ r: Switchyard_Chat_FriendListRequest, from c: TCPConnection) {
        var reply = Switchyard_Chat_FriendListReply()
        reply.requestID = r.requestID
        state.withLock { s in
            guard let user = s.sessions[c.id]?.user else {
                reply.status = Self.notLoggedIn
                return post(reply, id: ChatMessageID.friendListReply, to: c)
            }
            reply.status = .ok
            reply.friends = (s.friends[user] ?? []).sorted().map { name in
                var f = Switchyard_Chat_Friend()
                f.name = name
                f.online = s.online[name] != nil
                return f
            }
            post(reply, id: ChatMessageID.friendListReply, to: c)
        }
    }

    func announcePresenceLocked(_ user: String, online: Bool, to friends: Set<String>, state s: inout State) {
        var event = Switchyard_Chat_PresenceEvent()
        event.user = user
        event.online = online
        for friend in friends {
            if let id = s.online[friend], let session = s.sessions[id] {
                post(event, id: ChatMessageID.presenceEvent, to: session.connection)
            }
        }
    }
}
