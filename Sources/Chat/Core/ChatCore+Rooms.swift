/// Rooms: join (loading a room's history the first time), leave, list, say.
extension ChatCore {
    /// A room's history as storage returns it.
    struct RoomHistory: Sendable, Equatable {
        /// The last messages, oldest first.
        var messages: [Switchyard_Chat_RoomMessage]
        /// The highest sequence number given in the room (0 if none).
        var lastSequence: UInt64
    }

    mutating func join(_ r: Switchyard_Chat_JoinRequest, from peer: ChatPeer) -> [ChatAction] {
        var actions: [ChatAction] = []
        var refusal = checkRoomName(r.room, into: &actions)
        if refusal == nil { refusal = joinRefusal(room: r.room, peer: peer, into: &actions) }
        if let status = refusal {
            // A name refused for its size is not echoed back.
            let echo = r.room.utf8.count <= configuration.maxRoomNameBytes ? r.room : ""
            actions.append(.send(ChatFrame(joinReply(r.requestID, echo, status), id: .joinReply), to: peer))
            actions.append(Self.refusalLog("join", peer, status))
            return actions
        }
        guard rooms[r.room] != nil else {
            if let status = startJob(for: peer, into: &actions) {
                actions.append(.send(ChatFrame(joinReply(r.requestID, r.room, status), id: .joinReply), to: peer))
                actions.append(Self.refusalLog("join", peer, status))
                return actions
            }
            loadsInFlight[r.room, default: 0] += 1
            return [.loadRoom(LoadRoomJob(peer: peer, requestID: r.requestID, room: r.room,
                                          limit: configuration.historyLength))]
        }
        addMember(room: r.room, peer: peer, requestID: r.requestID, into: &actions)
        return actions
    }

    /// The history of a room that was not in memory, or nil when storage failed.
    mutating func historyLoaded(_ job: LoadRoomJob, _ history: RoomHistory?) -> [ChatAction] {
        endJob(for: job.peer)
        let loads = loadsInFlight[job.room, default: 1] - 1
        loadsInFlight[job.room] = loads > 0 ? loads : nil
        defer { freeRoomIfUnused(job.room) }
        var actions: [ChatAction] = []
        if rooms[job.room] == nil {
            guard let history else {
                let reply = joinReply(job.requestID, job.room, Self.internalError)
                return [.send(ChatFrame(reply, id: .joinReply), to: job.peer)]
            }
            rooms[job.room] = ChatRoom(lastSequence: history.lastSequence, history: history.messages)
        }
        if let status = joinRefusal(room: job.room, peer: job.peer, into: &actions) {
            actions.append(.send(ChatFrame(joinReply(job.requestID, job.room, status), id: .joinReply), to: job.peer))
            return actions
        }
        addMember(room: job.room, peer: job.peer, requestID: job.requestID, into: &actions)
        return actions
    }

    /// nil when `peer` may join `room`.
    private func joinRefusal(room: String, peer: ChatPeer, into actions: inout [ChatAction])
        -> Switchyard_Chat_Status?
    {
        guard let session = sessions[peer.id], !session.cutOff else { return Self.internalError }
        guard session.user != nil else { return Self.notLoggedIn }
        if !session.rooms.contains(room) && session.rooms.count >= configuration.maxRoomsPerUser {
            actions.append(.count(.limitRejection, 1))
            return Switchyard_Chat_Status(.limitExceeded, "at most \(configuration.maxRoomsPerUser) rooms per user")
        }
        return nil
    }

    /// Frees `room` when nobody is in it and no load of its history is under way (the history stays in the
    /// database: the next join loads it again).
    mutating func freeRoomIfUnused(_ room: String) {
        if let r = rooms[room], r.members.count == 0, loadsInFlight[room] == nil { rooms[room] = nil }
    }

    /// Removes `peer` from `room`, freeing the room when it is left unused.
    mutating func removeMember(_ peer: ChatPeer, from room: String) {
        rooms[room]?.members.remove(peer)
        freeRoomIfUnused(room)
    }

    /// Adds `peer` to an existing room and replies with the history (before any later room message).
    private mutating func addMember(room: String, peer: ChatPeer, requestID: UInt32, into actions: inout [ChatAction]) {
        sessions[peer.id]?.rooms.insert(room)
        rooms[room]!.members.insert(peer)
        var reply = joinReply(requestID, room, .ok)
        reply.memberCount = UInt32(rooms[room]!.members.count)
        reply.history = rooms[room]!.history
        actions.append(.send(ChatFrame(reply, id: .joinReply), to: peer))
    }

    private func joinReply(_ requestID: UInt32, _ room: String, _ status: Switchyard_Chat_Status)
        -> Switchyard_Chat_JoinReply
    {
        var reply = Switchyard_Chat_JoinReply()
        reply.requestID = requestID
        reply.room = room
        reply.status = status
        return reply
    }

    mutating func leave(_ r: Switchyard_Chat_LeaveRequest, from peer: ChatPeer) -> [ChatAction] {
        var reply = Switchyard_Chat_LeaveReply()
        reply.requestID = r.requestID
        reply.room = r.room.utf8.count <= configuration.maxRoomNameBytes ? r.room : ""  // not echoed when too long
        if let session = sessions[peer.id], session.user != nil {
            if session.rooms.contains(r.room) {
                sessions[peer.id]?.rooms.remove(r.room)
                removeMember(peer, from: r.room)
                reply.status = .ok
            } else {
                reply.status = Switchyard_Chat_Status(.notInRoom, "not in room '\(r.room)'")
            }
        } else {
            reply.status = Self.notLoggedIn
        }
        return [.send(ChatFrame(reply, id: .leaveReply), to: peer)]
    }

    func listRooms(_ r: Switchyard_Chat_ListRoomsRequest, from peer: ChatPeer) -> [ChatAction] {
        var reply = Switchyard_Chat_ListRoomsReply()
        reply.requestID = r.requestID
        reply.status = .ok
        reply.rooms = rooms.filter { $0.value.members.count > 0 }.keys.sorted().map { name in
            var info = Switchyard_Chat_RoomInfo()
            info.name = name
            info.memberCount = UInt32(rooms[name]!.members.count)
            return info
        }
        return [.send(ChatFrame(reply, id: .listRoomsReply), to: peer)]
    }

    /// A message to a room at `now` (monotonic, for the rate limit), stamped `unixMs` (wall clock): the next
    /// sequence number, the reply, one broadcast to every member (the sender included), and the history write.
    /// `historyHasRoom`: the history queue can take the message; when it cannot, the message is refused (the sender
    /// is told to retry; counted) rather than sent and then lost.
    mutating func say(_ r: Switchyard_Chat_SayRequest, from peer: ChatPeer, now: UInt64, unixMs: Int64,
                      historyHasRoom: Bool = true) -> [ChatAction]
    {
        var actions: [ChatAction] = []
        var reply = Switchyard_Chat_SayReply.with { $0.requestID = r.requestID }
        do throws(ChatRefusal) {
            var (session, user) = try messageSender(r.text, peer, into: &actions)
            guard session.rooms.contains(r.room), rooms[r.room] != nil else {
                throw ChatRefusal(.notInRoom, "join that room first")
            }
            try takeMessageToken(&session, of: peer, now: now, into: &actions)
            guard historyHasRoom else {
                actions.append(.count(.historyRefused, 1))
                throw ChatRefusal(.rateLimited, "busy: the room history is not keeping up; try again")
            }
            var m = Switchyard_Chat_RoomMessage()
            m.room = r.room
            m.sender = user
            m.text = r.text
            m.timeMs = unixMs
            rooms[r.room]!.lastSequence += 1
            m.sequence = rooms[r.room]!.lastSequence
            rooms[r.room]!.record(m, keep: configuration.historyLength)
            reply.status = .ok
            reply.sequence = m.sequence
            let members = rooms[r.room]!.members
            actions.reserveCapacity(4)
            actions.append(.send(ChatFrame(reply, id: .sayReply), to: peer))
            actions.append(.broadcast(ChatFrame(m, id: .roomMessage), to: members))
            actions.append(.count(.delivered, members.count))
            actions.append(.appendHistory(m))
            return actions
        } catch {
            return Self.refused(reply, error.status, id: .sayReply, "say", peer, after: actions)
        }
    }
}
