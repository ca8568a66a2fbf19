#if canImport(Glibc)
import Glibc
#endif
import Logging
import Messaging
import Reactor
import Synchronization

/// The shell around `ChatCore`: it owns the connections, the clock, the loops and the jobs, and performs what the
/// core decides.
///
/// Threads: the core lives behind one Mutex (`state`); handlers on any I/O loop and the jobs take it briefly
/// (`decide`). The deliveries the core returns (`send`, `broadcast`) are posted to the receivers' loops with
/// `loop.execute` **while the lock is held**, so every connection receives frames in the order the lock
/// serialized them (room messages in sequence order). Posting never calls into a connection, so it cannot re-enter
/// `onClose`. Counters are added under the lock too (before the replies they go with are posted); everything else
/// (jobs, cut-offs, history writes, logs) is performed after unlocking. Delivery tasks run on the receiver's loop,
/// find the connection in that loop's table, send, and check its queued output (a slow consumer goes back to the
/// core). Storage and the password KDF run as jobs of `ChatServer.run()`, off the loops.
final class ChatHub: Sendable {
    let configuration: ChatConfiguration
    let store: ChatStore
    let writer: HistoryWriter
    let statistics = ChatStatistics()
    let logger: Logger
    let state: Mutex<ChatCore>
    let jobs: ChatJobQueue
    /// A salt for hashing against when the user does not exist, so both failures take the same time.
    let decoySalt = PasswordHasher.makeSalt()

    /// The loops, by the index the core knows them by, and each one's table of its connections.
    let loops: [EventLoop]
    private let tables: [LoopConnections]
    private let loopIndex: [ObjectIdentifier: Int]

    /// One loop's connections by id; touched only on that loop.
    final class LoopConnections: @unchecked Sendable {
        // @unchecked Sendable: each instance belongs to one loop and is read and written only on its thread.
        var connections: [UInt64: TCPConnection] = [:]
    }

    init(configuration: ChatConfiguration, store: ChatStore, loops: [EventLoop], logger: Logger) {
        self.configuration = configuration
        self.store = store
        self.logger = logger
        let statistics = self.statistics
        writer = HistoryWriter(store: store, logger: logger, lost: { statistics.add(.historyLost, $0) })
        state = Mutex(ChatCore(configuration: configuration))
        jobs = ChatJobQueue()
        self.loops = loops
        tables = loops.map { _ in LoopConnections() }
        var index: [ObjectIdentifier: Int] = [:]
        for (i, loop) in loops.enumerated() { index[ObjectIdentifier(loop)] = i }
        loopIndex = index
    }

    /// `c` as the core knows it.
    func peer(_ c: TCPConnection) -> ChatPeer {
        guard let loop = loopIndex[ObjectIdentifier(c.loop)] else {
            preconditionFailure("connection \(c.id) on a loop outside the server's group")
        }
        return ChatPeer(id: c.id, loop: loop, source: c.peerAddress.ip)
    }

    // MARK: Deciding

    /// `decide` for a request of `c`, its peer worked out before the lock is taken.
    func decide(_ c: TCPConnection, _ body: (inout ChatCore, ChatPeer) -> [ChatAction]) {
        let peer = peer(c)
        decide { body(&$0, peer) }
    }

    /// Runs `body` on the core under the lock and, before unlocking, adds its counts (so a peer that has its reply
    /// sees the counters that go with it) and posts its deliveries in order; then performs the rest. Safe to call
    /// from any thread (not while holding `state`).
    func decide(_ body: (inout ChatCore) -> [ChatAction]) {
        let later = state.withLock { core -> [ChatAction] in
            let actions = body(&core)
            for case .count(let counter, let n) in actions { statistics.add(counter, n) }
            var later: [ChatAction] = []
            for action in actions {
                switch action {
                case .send(let frame, let peer): post(frame, to: peer)
                case .broadcast(let frame, let members): post(frame, to: members)
                // Under the lock: `say` checked the queue's room under this lock, so the append fits.
                case .appendHistory(let message): writer.append(message)
                case .count: break
                default: later.append(action)
                }
            }
            return later
        }
        for action in later { perform(action) }
    }

    /// Performs one action that is not a delivery. Safe to call from any thread.
    private func perform(_ action: ChatAction) {
        switch action {
        case .send(let frame, let peer): post(frame, to: peer)
        case .broadcast(let frame, let members): post(frame, to: members)
        case .cutOff(let peer, let notice, let grace): cutOff(peer, notice: notice, grace: grace)
        case .register(let job): jobs.submit { [self] in await register(job) }
        case .verifyLogin(let job): jobs.submit { [self] in await verifyLogin(job) }
        case .loadRoom(let job): jobs.submit { [self] in await loadRoom(job) }
        case .addFriend(let job): jobs.submit { [self] in await addFriend(job) }
        case .appendHistory(let message): writer.append(message)
        case .count(let counter, let n): statistics.add(counter, n)
        case .log(let level, let message, let metadata): logger.log(level: level, message, metadata: metadata)
        }
    }

    // MARK: Connections

    /// Loop thread of `c`.
    func connected(_ c: TCPConnection) {
        let peer = peer(c)
        tables[peer.loop].connections[c.id] = c
        let now = SystemInfo.monotonicNanoseconds()
        decide { $0.connected(peer, now: now) }
    }

    /// Loop thread of `c`: it leaves its rooms, and a logged-in user goes offline (its online friends are told).
    func disconnected(_ c: TCPConnection) {
        let peer = peer(c)
        tables[peer.loop].connections[c.id] = nil
        decide { $0.closed(peer.id) }
    }

    // MARK: Delivery

    /// Posts a frame to one connection's loop (in lock order when called under the lock). Safe from any thread.
    private func post(_ frame: ChatFrame, to peer: ChatPeer) {
        let table = tables[peer.loop]
        loops[peer.loop].execute { [self] in
            guard let c = table.connections[peer.id], c.isActive else { return }
            frame.body.withUnsafeBytes { _ = c.sendFrameInLoop(messageID: frame.id.rawValue, body: $0) }
            checkBacklog(c)
        }
    }

    /// Posts one frame to the members of a room: one task per loop, one encoding. Safe from any thread.
    private func post(_ frame: ChatFrame, to members: RoomMembers) {
        for (loop, ids) in members.byLoop {
            let table = tables[loop]
            loops[loop].execute { [self] in
                frame.body.withUnsafeBytes { raw in
                    for id in ids {
                        guard let c = table.connections[id], c.isActive else { continue }
                        c.sendFrameInLoop(messageID: frame.id.rawValue, body: raw)
                        checkBacklog(c)
                    }
                }
            }
        }
    }

    /// Loop thread of `c`: a connection that did not drain goes to the core, which cuts it off (once).
    private func checkBacklog(_ c: TCPConnection) {
        let queued = c.queuedOutputBytes
        guard queued > configuration.maxQueuedOutputBytes else { return }
        decide { $0.outputBacklogged(c.id, queuedBytes: queued) }
    }

    /// The notice, then a graceful close, then a hard one after the grace period. On the connection's loop.
    private func cutOff(_ peer: ChatPeer, notice: ChatFrame, grace: Duration) {
        let table = tables[peer.loop]
        let loop = loops[peer.loop]
        let task: @Sendable () -> Void = {
            guard let c = table.connections[peer.id] else { return }
            notice.body.withUnsafeBytes { _ = c.sendFrameInLoop(messageID: notice.id.rawValue, body: $0) }
            c.close()
            loop.schedule(after: grace) { c.forceClose() }
        }
        if loop.inLoopThread { task() } else { loop.execute(task) }
    }

    // MARK: Clock

    static func unixMilliseconds() -> Int64 { SystemInfo.unixMilliseconds() }
}
