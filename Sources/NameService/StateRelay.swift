import Foundation
import LarsProtocol
import Logging
import Messaging
import Metrics
import Reactor
import RouteStore
import Storage
import SwitchyardCore
import Synchronization

/// The name service's state relay (ids 111-114): publishes are written to StateChange in the order they arrive
/// (one writer), every name service on the database reads the new rows and delivers them to its subscribers of
/// the module, and a subscriber that says the last id it got first receives the retained rows after it.
///
/// Order: one writer per name service, so one publisher's changes get increasing ids; delivery is in id order per
/// name service. The inserts of every name service on the database take one database lock held until they commit
/// (``insertInIDOrder(_:)``), so ids are committed in increasing order and a reader of "id > last" misses none. A
/// subscriber catching up gets the rows up to the last id delivered when it subscribed, then the live ones after
/// it (held meanwhile), so it never sees an id twice or out of order.
///
/// Bounds: payloads up to `maxPayload`; publishes waiting for the database up to `maxPendingPublishes` and
/// `maxPendingBytes` (refused beyond, one log line per episode); a catch-up sends at most `maxCatchUp` changes (the
/// newest); subscriptions per connection up to `maxSubscriptions`; a subscriber whose unsent output passes
/// `maxQueuedBytes` is closed (it reconnects and catches up), not waited for.
final class StateRelay: Sendable {
    struct Limits: Sendable {
        var maxPayload = 64 * 1024
        var maxSubscriptions = 1024
        var maxQueuedBytes = 4 << 20
        var retention: Duration = .seconds(600)
        var maxPendingPublishes = 10_000
        /// Payload bytes waiting for the database, all publishers together.
        var maxPendingBytes = 16 << 20
        /// Changes a catch-up sends at most (the newest before the subscription; older ones are skipped).
        var maxCatchUp = 10_000
    }

    private struct Subscriber {
        let connection: TCPConnection
        /// Changes delivered live while the catch-up read runs (sent after it, above its last id).
        var held: [Switchyard_Names_StateChange]?
        var caughtUpThrough: UInt64 = 0
    }

    private struct Pending {
        let request: Switchyard_Names_PublishState
        let connection: TCPConnection
    }

    private struct State {
        var subscribers: [Int32: [UInt64: Subscriber]] = [:]
        var perConnection: [UInt64: Set<Int32>] = [:]
        /// The last id delivered (nil until the first read set where "now" is).
        var lastDelivered: UInt64?
        var pending: [Pending] = []
        var pendingBytes = 0
        /// Publishes are being refused for a full queue (one log line per episode).
        var refusingFull = false
        var slowClosed = 0
        var published = 0
        var delivered = 0
        var refused = 0
    }

    /// swift-metrics instruments (no-ops until the executable bootstraps a backend), beside ``counters``.
    private struct Metrics: Sendable {
        static let dimensions = [("service", "names")]
        let published = Counter(label: "switchyard_names_state_published_total", dimensions: dimensions)
        let delivered = Counter(label: "switchyard_names_state_delivered_total", dimensions: dimensions)
        let refused = Counter(label: "switchyard_names_state_refused_total", dimensions: dimensions)
        let slowClosed = Counter(label: "switchyard_names_state_subscribers_closed_total", dimensions: dimensions)
    }

    let limits: Limits
    private let metrics = Metrics()
    private let pool: ConnectionPool
    private let logger: Logger
    private let state = Mutex(State())
    private let wake: AsyncStream<Void>
    private let wakeUp: AsyncStream<Void>.Continuation

    init(pool: ConnectionPool, limits: Limits, logger: Logger) {
        self.pool = pool
        self.limits = limits
        self.logger = logger
        (wake, wakeUp) = AsyncStream.makeStream(of: Void.self, bufferingPolicy: .bufferingNewest(1))
    }

    /// Counters: changes published here, delivered to subscribers here, publishes refused, slow subscribers closed.
    var counters: (published: Int, delivered: Int, refused: Int, slowClosed: Int, ready: Bool) {
        state.withLock { ($0.published, $0.delivered, $0.refused, $0.slowClosed, $0.lastDelivered != nil) }
    }

    // MARK: Requests (loop threads)

    func publish(_ request: Switchyard_Names_PublishState, on connection: TCPConnection) {
        func refuse(_ reason: String) {
            state.withLock { $0.refused += 1 }
            metrics.refused.increment()
            var reply = Switchyard_Names_PublishStateResponse()
            reply.requestID = request.requestID
            reply.reason = reason
            connection.send(reply, id: MessageID.publishStateResponse)
        }
        guard request.payload.count <= limits.maxPayload else {
            return refuse("payload of \(request.payload.count) bytes is above the limit of \(limits.maxPayload)")
        }
        let (queued, episodeStarts) = state.withLock { s -> (Bool, Bool) in
            guard s.pending.count < limits.maxPendingPublishes,
                  s.pendingBytes + request.payload.count <= limits.maxPendingBytes
            else {
                defer { s.refusingFull = true }
                return (false, !s.refusingFull)
            }
            s.pending.append(Pending(request: request, connection: connection))
            s.pendingBytes += request.payload.count
            return (true, false)
        }
        guard queued else {
            if episodeStarts {
                logger.info("state relay: publishes refused, too many waiting for the database (one line per episode)",
                            metadata: ["state.max_pending": "\(limits.maxPendingPublishes)",
                                       "state.max_pending_bytes": "\(limits.maxPendingBytes)"])
            }
            return refuse("too many publishes waiting for the database")
        }
        wakeUp.yield()
    }

    func subscribe(_ request: Switchyard_Names_SubscribeState, on connection: TCPConnection) {
        let modid = request.modid
        let catchUp = state.withLock { s -> UInt64?? in
            var modules = s.perConnection[connection.id] ?? []
            guard modules.contains(modid) || modules.count < limits.maxSubscriptions else { return .none }
            modules.insert(modid)
            s.perConnection[connection.id] = modules
            var subscriber = Subscriber(connection: connection)
            let through = s.lastDelivered ?? 0
            if request.hasAfterID, request.afterID < through {
                subscriber.held = []
                subscriber.caughtUpThrough = through
                s.subscribers[modid, default: [:]][connection.id] = subscriber
                return .some(through)
            }
            s.subscribers[modid, default: [:]][connection.id] = subscriber
            return .some(nil)
        }
        guard let catchUp else {
            logger.info("state subscriptions of a connection at their limit; further modules refused", metadata: [
                "peer.address": "\(connection.peerAddress)", "state.max_subscriptions": "\(limits.maxSubscriptions)"])
            return
        }
        guard let through = catchUp else { return }
        let after = request.afterID
        Task { await self.catchUp(modid: modid, after: after, through: through, connection: connection) }
    }

    func connectionClosed(_ connection: TCPConnection) {
        state.withLock { s in
            for modid in s.perConnection.removeValue(forKey: connection.id) ?? [] {
                s.subscribers[modid]?[connection.id] = nil
                if s.subscribers[modid]?.isEmpty == true { s.subscribers[modid] = nil }
            }
        }
    }

    // MARK: Tasks

    /// Writes publishes in arrival order and reads new rows, until cancelled: after each write, and at least every
    /// `pollInterval`; every `pruneInterval` rows past the retention are deleted.
    func run(pollInterval: Duration, pruneInterval: Duration) async {
        var lastPrune = ContinuousClock.now
        var failing = false
        await withTaskGroup(of: Void.self) { tasks in
            let wakeUp = self.wakeUp
            tasks.addTask {
                while !Task.isCancelled {
                    try? await Task.sleep(for: pollInterval)
                    wakeUp.yield()
                }
            }
            wakeUp.yield()
            for await _ in wake {
                if Task.isCancelled { break }
                do {
                    // Where "now" is comes first, so a publish written after it is delivered, not skipped.
                    if state.withLock({ $0.lastDelivered == nil }) { try await readNew() }
                    try await writePending()
                    try await readNew()
                    if ContinuousClock.now - lastPrune >= pruneInterval {
                        lastPrune = .now
                        let cutoff = SystemInfo.unixMilliseconds() - limits.retention.millisecondsTruncated
                        try await pool.execute("DELETE FROM StateChange WHERE created_ms < ?", [.integer(cutoff)])
                    }
                    if failing {
                        failing = false
                        logger.info("state relay: the database answers again")
                    }
                } catch {
                    if Task.isCancelled { break }
                    if !failing {
                        failing = true
                        logger.info("state relay: the database does not answer; publishes wait (bounded)",
                                    metadata: ["error.description": "\(error)"])
                    }
                }
            }
            tasks.cancelAll()
        }
    }

    private func writePending() async throws {
        while true {
            let batch = state.withLock { Array($0.pending.prefix(100)) }
            if batch.isEmpty { return }
            let ids = try await insertInIDOrder(batch)
            state.withLock { s in
                s.pending.removeFirst(batch.count)
                s.pendingBytes -= batch.reduce(0) { $0 + $1.request.payload.count }
                if s.pending.isEmpty { s.refusingFull = false }
                s.published += batch.count
            }
            metrics.published.increment(by: batch.count)
            for (item, id) in zip(batch, ids) {
                var reply = Switchyard_Names_PublishStateResponse()
                reply.requestID = item.request.requestID
                reply.ok = true
                reply.id = UInt64(id)
                item.connection.send(reply, id: MessageID.publishStateResponse)
            }
        }
    }

    /// The PostgreSQL advisory lock key of the inserts (any constant all replicas agree on: "SYst" in ASCII).
    static let insertLockKey: Int64 = 0x5359_7374

    /// Inserts a batch in one transaction under one database-wide lock held until it commits, so that every name
    /// service on the database commits StateChange ids in the order it takes them, and a reader that saw an id has
    /// seen every lower one that will ever be committed ("id > last seen" never skips a row). The lock is what
    /// makes that hold with two writers: without it two inserts may take ids 7 and 8 and commit 8 first. Its cost
    /// is one lock and one commit per batch of up to 100 publishes, which state changes (a few a second per
    /// module) do not notice; a look-back window over recent ids would keep writers apart but deliver out of id
    /// order, and a catch-up by "after id" could no longer be exact. The locks are transaction-scoped (released by
    /// the commit or the rollback, also through `agent://`): PostgreSQL's advisory lock, MySQL's row lock on
    /// StateChangeLock; SQLite has one writer at a time already (`BEGIN IMMEDIATE`). Returns the ids in batch order.
    private func insertInIDOrder(_ batch: [Pending]) async throws -> [Int64] {
        @Sendable func insertAll(on connection: SQLConnection) async throws -> [Int64] {
            var ids: [Int64] = []
            for item in batch {
                ids.append(try await connection.insert(
                    "INSERT INTO StateChange (modid, payload, created_ms) VALUES (?, ?, ?)",
                    [SQLValue(item.request.modid), .blob(Array(item.request.payload)),
                     .integer(SystemInfo.unixMilliseconds())]))
            }
            return ids
        }
        switch pool.dialect {
        case .sqlite:
            return try await pool.transaction { try await insertAll(on: $0) }
        case .postgres:
            return try await pool.transaction { connection in
                // Released by the commit (or the rollback), after the rows are visible.
                _ = try await connection.query("SELECT pg_advisory_xact_lock(\(Self.insertLockKey))", [])
                return try await insertAll(on: connection)
            }
        case .mysql:
            return try await pool.transaction { connection in
                _ = try await connection.query(RouteSchema.lockStateChanges(.mysql), [SQLValue(1)])
                return try await insertAll(on: connection)
            }
        }
    }

    private func readNew() async throws {
        guard let last = state.withLock({ $0.lastDelivered }) else {
            let top = try await pool.queryFirst("SELECT MAX(id) FROM StateChange")
            let start = UInt64((try? top?.decode(0, as: Int64?.self)).flatMap { $0 } ?? 0)
            state.withLock { $0.lastDelivered = max($0.lastDelivered ?? 0, start) }
            return
        }
        let rows = try await pool.query(
            "SELECT id, modid, payload FROM StateChange WHERE id > ? ORDER BY id LIMIT 1000",
            [.integer(Int64(last))]).rows
        let changes = rows.compactMap(Self.change(from:))
        guard !changes.isEmpty else { return }
        let sends = state.withLock { s -> [(TCPConnection, Switchyard_Names_StateChange)] in
            var sends: [(TCPConnection, Switchyard_Names_StateChange)] = []
            for change in changes {
                for (id, subscriber) in s.subscribers[change.modid] ?? [:] {
                    if subscriber.held != nil {
                        s.subscribers[change.modid]![id]!.held!.append(change)
                    } else {
                        sends.append((subscriber.connection, change))
                    }
                }
            }
            s.lastDelivered = max(s.lastDelivered ?? 0, changes.last!.id)
            s.delivered += sends.count
            return sends
        }
        if !sends.isEmpty { metrics.delivered.increment(by: sends.count) }
        for (connection, change) in sends { send(change, to: connection) }
    }

    private func catchUp(modid: Int32, after: UInt64, through: UInt64, connection: TCPConnection) async {
        var rows: [Switchyard_Names_StateChange] = []
        do {
            rows = Array(try await pool.query(
                "SELECT id, modid, payload FROM StateChange WHERE modid = ? AND id > ? AND id <= ? ORDER BY id DESC "
                    + "LIMIT \(limits.maxCatchUp)",
                [SQLValue(modid), .integer(Int64(after)), .integer(Int64(through))]).rows.compactMap(Self.change(from:))
                .reversed())
        } catch {
            logger.info("state relay: a subscriber's catch-up read failed; it gets the live changes only",
                        metadata: ["peer.address": "\(connection.peerAddress)", "error.description": "\(error)"])
        }
        let held = state.withLock { s -> [Switchyard_Names_StateChange] in
            guard var subscriber = s.subscribers[modid]?[connection.id] else { return [] }
            let held = subscriber.held ?? []
            subscriber.held = nil
            s.subscribers[modid]![connection.id] = subscriber
            s.delivered += rows.count + held.count
            return held
        }
        if !rows.isEmpty || !held.isEmpty { metrics.delivered.increment(by: rows.count + held.count) }
        for change in rows + held.filter({ $0.id > through }) { send(change, to: connection) }
    }

    private func send(_ change: Switchyard_Names_StateChange, to connection: TCPConnection) {
        guard connection.queuedOutputBytes <= limits.maxQueuedBytes else {
            state.withLock { $0.slowClosed += 1 }
            metrics.slowClosed.increment()
            logger.info("state relay: a subscriber does not read; closed (it catches up when it reconnects)",
                        metadata: ["peer.address": "\(connection.peerAddress)"])
            connection.forceClose()
            return
        }
        connection.send(change, id: MessageID.stateChange)
    }

    private static func change(from row: SQLRow) -> Switchyard_Names_StateChange? {
        guard let id = try? row.decode(0, as: Int64.self), let modid = try? row.decode(1, as: Int32.self),
              let payload = try? row.decode(2, as: [UInt8].self)
        else { return nil }
        var change = Switchyard_Names_StateChange()
        change.id = UInt64(id)
        change.modid = modid
        change.payload = Data(payload)
        return change
    }
}
