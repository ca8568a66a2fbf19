import Logging
import Reactor

/// The request handlers (each runs on the requester's loop and hands the request to the core with the clock's
/// readings) and the jobs the core asks for (storage and the KDF, run by `ChatServer.run()`, each feeding its
/// outcome back to the core). Every request gets a reply with a status.
extension ChatHub {
    // MARK: Requests (loop thread of `c`)

    func register(_ r: Switchyard_Chat_RegisterRequest, from c: TCPConnection) {
        let now = SystemInfo.monotonicNanoseconds()
        decide(c) { $0.register(r, from: $1, now: now) }
    }

    func login(_ r: Switchyard_Chat_LoginRequest, from c: TCPConnection) {
        let now = SystemInfo.monotonicNanoseconds()
        decide(c) { $0.login(r, from: $1, now: now) }
    }

    func join(_ r: Switchyard_Chat_JoinRequest, from c: TCPConnection) {
        decide(c) { $0.join(r, from: $1) }
    }

    func leave(_ r: Switchyard_Chat_LeaveRequest, from c: TCPConnection) {
        decide(c) { $0.leave(r, from: $1) }
    }

    func listRooms(_ r: Switchyard_Chat_ListRoomsRequest, from c: TCPConnection) {
        decide(c) { $0.listRooms(r, from: $1) }
    }

    func say(_ r: Switchyard_Chat_SayRequest, from c: TCPConnection) {
        let peer = peer(c)
        let now = SystemInfo.monotonicNanoseconds()
        let unixMs = Self.unixMilliseconds()
        let writer = self.writer
        decide { core in
            core.say(r, from: peer, now: now, unixMs: unixMs,
                     historyHasRoom: writer.hasRoom(text: r.text, room: r.room, sender: core.sessions[peer.id]?.user))
        }
    }

    func privateMessage(_ r: Switchyard_Chat_PrivateMessageRequest, from c: TCPConnection) {
        let peer = peer(c)
        let now = SystemInfo.monotonicNanoseconds()
        let unixMs = Self.unixMilliseconds()
        decide { $0.privateMessage(r, from: peer, now: now, unixMs: unixMs) }
    }

    func addFriend(_ r: Switchyard_Chat_FriendAddRequest, from c: TCPConnection) {
        decide(c) { $0.addFriend(r, from: $1) }
    }

    func listFriends(_ r: Switchyard_Chat_FriendListRequest, from c: TCPConnection) {
        decide(c) { $0.listFriends(r, from: $1) }
    }

    // MARK: Jobs (a child task of ChatServer.run())

    func register(_ job: RegisterJob) async {
        let outcome: RegisterOutcome
        do {
            let salt = PasswordHasher.makeSalt()
            let hash = try PasswordHasher.hash(password: job.password, salt: salt, iterations: job.iterations)
            let user = StoredUser(name: job.name, salt: salt, hash: hash, iterations: job.iterations)
            outcome = try await store.insertUser(user, createdMs: Self.unixMilliseconds()) ? .created : .nameTaken
        } catch {
            logger.warning("register failed", metadata: ["error": "\(error)"])
            outcome = .failed
        }
        decide { $0.registered(job, outcome) }
    }

    func verifyLogin(_ job: LoginJob) async {
        var verified = false
        let outcome: LoginOutcome
        do {
            if let user = try await store.user(named: job.name) {
                verified = PasswordHasher.verify(password: job.password, salt: user.salt, iterations: user.iterations,
                                                 expected: user.hash)
            } else {
                _ = PasswordHasher.verify(password: job.password, salt: decoySalt,
                                          iterations: configuration.passwordIterations, expected: [])
            }
            if verified {
                let friends = try await store.friends(of: job.name)
                outcome = .verified(friends: friends, token: PasswordHasher.makeToken())
            } else {
                outcome = .invalidCredentials
            }
        } catch {
            logger.warning("login failed on storage", metadata: ["error": "\(error)"])
            outcome = .failed(passwordVerified: verified)
        }
        let now = SystemInfo.monotonicNanoseconds()
        decide { $0.loginVerified(job, outcome, now: now) }
    }

    func loadRoom(_ job: LoadRoomJob) async {
        var history: ChatCore.RoomHistory?
        // The room may have been freed with messages still queued: the database has them all once this returns, so
        // the loaded sequence number is the room's last.
        await writer.flush()
        do {
            let loaded = try await store.history(room: job.room, limit: job.limit)
            history = ChatCore.RoomHistory(messages: loaded.messages, lastSequence: loaded.lastSequence)
        } catch {
            logger.warning("could not load room history", metadata: ["chat.room": "\(job.room)", "error": "\(error)"])
        }
        decide { $0.historyLoaded(job, history) }
    }

    func addFriend(_ job: FriendJob) async {
        let outcome: FriendOutcome
        do {
            if try await store.user(named: job.friend) == nil {
                outcome = .noSuchUser
            } else {
                try await store.addFriendship(job.user, job.friend)
                outcome = .stored
            }
        } catch {
            logger.warning("friend add failed on storage", metadata: ["error": "\(error)"])
            outcome = .failed
        }
        decide { $0.friendshipStored(job, outcome) }
    }
}

/// The jobs the core asks for (storage, the KDF), waiting for `ChatServer.run()` to run each as a child task.
/// Safe to call from any thread.
final class ChatJobQueue: Sendable {
    typealias Job = @Sendable () async -> Void
    let stream: AsyncStream<Job>
    private let sink: AsyncStream<Job>.Continuation

    init() {
        (stream, sink) = AsyncStream.makeStream(of: Job.self, bufferingPolicy: .unbounded)
    }

    /// Queues a job; dropped once the queue is finished (the server is stopping).
    func submit(_ job: @escaping Job) { sink.yield(job) }

    /// No more jobs: `run()`'s loop over them ends once those queued are taken.
    func finish() { sink.finish() }
}
