/// Private messages, friends and presence.
extension ChatCore {
    /// A private message to an online user at `now` (monotonic, for the rate limit), stamped `unixMs`.
    mutating func privateMessage(_ r: Switchyard_Chat_PrivateMessageRequest, from peer: ChatPeer, now: UInt64,
                                 unixMs: Int64) -> [ChatAction] {
        var actions: [ChatAction] = []
        var reply = Switchyard_Chat_PrivateMessageReply.with { $0.requestID = r.requestID }
        do throws(ChatRefusal) {
            var (session, user) = try messageSender(r.text, peer, into: &actions)
            guard let targetID = online[r.to], let target = sessions[targetID] else {
                let name = Self.isValidUserName(r.to) ? "'\(r.to)'" : "that user"
                throw ChatRefusal(.noSuchUser, "\(name) is not online")
            }
            try takeMessageToken(&session, of: peer, now: now, into: &actions)
            var m = Switchyard_Chat_PrivateMessage()
            m.from = user
            m.to = r.to
            m.text = r.text
            m.timeMs = unixMs
            reply.status = .ok
            return [
                .send(ChatFrame(m, id: .privateMessage), to: target.peer),
                .count(.delivered, 1),
                .send(ChatFrame(reply, id: .privateMessageReply), to: peer),
            ]
        } catch {
            return Self.refused(reply, error.status, id: .privateMessageReply, "private message", peer, after: actions)
        }
    }

    mutating func addFriend(_ r: Switchyard_Chat_FriendAddRequest, from peer: ChatPeer) -> [ChatAction] {
        var reply = Switchyard_Chat_FriendAddReply()
        reply.requestID = r.requestID
        guard let me = sessions[peer.id]?.user else {
            reply.status = Self.notLoggedIn
            return [.send(ChatFrame(reply, id: .friendAddReply), to: peer)]
        }
        guard Self.isValidUserName(r.name), r.name != me else {
            reply.status = Switchyard_Chat_Status(.badRequest, "not a name you can add")
            return [.send(ChatFrame(reply, id: .friendAddReply), to: peer),
                    Self.refusalLog("friend add", peer, reply.status)]
        }
        var actions: [ChatAction] = []
        if let status = startJob(for: peer, into: &actions) {
            reply.status = status
            return actions + [.send(ChatFrame(reply, id: .friendAddReply), to: peer),
                              Self.refusalLog("friend add", peer, status)]
        }
        return [.addFriend(FriendJob(peer: peer, requestID: r.requestID, user: me, friend: r.name))]
    }

    mutating func friendshipStored(_ job: FriendJob, _ outcome: FriendOutcome) -> [ChatAction] {
        endJob(for: job.peer)
        var reply = Switchyard_Chat_FriendAddReply()
        reply.requestID = job.requestID
        switch outcome {
        case .noSuchUser:
            reply.status = Switchyard_Chat_Status(.noSuchUser, "no user '\(job.friend)'")
            return [.send(ChatFrame(reply, id: .friendAddReply), to: job.peer)]
        case .failed:
            reply.status = Self.internalError
            return [.send(ChatFrame(reply, id: .friendAddReply), to: job.peer)]
        case .stored:
            break
        }
        let (me, friend) = (job.user, job.friend)
        friends[me]?.insert(friend)
        friends[friend]?.insert(me)
        reply.status = .ok
        var actions: [ChatAction] = [.send(ChatFrame(reply, id: .friendAddReply), to: job.peer)]
        // Each learns the other is online right away.
        if online[friend] != nil, online[me] == job.peer.id {
            announcePresence(friend, online: true, to: [me], into: &actions)
            announcePresence(me, online: true, to: [friend], into: &actions)
        }
        return actions
    }

    func listFriends(_ r: Switchyard_Chat_FriendListRequest, from peer: ChatPeer) -> [ChatAction] {
        var reply = Switchyard_Chat_FriendListReply()
        reply.requestID = r.requestID
        if let user = sessions[peer.id]?.user {
            reply.status = .ok
            reply.friends = (friends[user] ?? []).sorted().map { name in
                var f = Switchyard_Chat_Friend()
                f.name = name
                f.online = online[name] != nil
                return f
            }
        } else {
            reply.status = Self.notLoggedIn
        }
        return [.send(ChatFrame(reply, id: .friendListReply), to: peer)]
    }

    /// Tells the online ones among `friends` that `user` came online or went offline.
    func announcePresence(_ user: String, online isOnline: Bool, to friends: Set<String>,
                          into actions: inout [ChatAction]) {
        var event = Switchyard_Chat_PresenceEvent()
        event.user = user
        event.online = isOnline
        let frame = ChatFrame(event, id: .presenceEvent)
        for friend in friends {
            if let id = online[friend], let session = sessions[id] {
                actions.append(.send(frame, to: session.peer))
            }
        }
    }
}
