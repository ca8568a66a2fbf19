import LarsWire
import Logging
import Metrics
import Reactor
import SwiftProtobuf
import SwitchyardCore
import Synchronization

/// Configuration of a `FramedServer`.
public struct FramedServerConfiguration: Sendable {
    /// Address, port, connection limit, water marks.
    public var server: ServerConfiguration
    /// Frames with a longer body are a protocol error: the connection is closed (default 4 MiB).
    public var maxBodyLength: Int
    /// A connection silent for longer (not one byte received: a peer that sends heartbeats or frames is not idle)
    /// is closed. Default 5 minutes; nil: off.
    public var idleTimeout: Duration?
    /// A frame must arrive whole within this time from its first byte: a peer that starts a frame and then trickles
    /// it (or stops) is closed, whatever it sends meanwhile. Default 10 s (a 4 MiB frame at 400 KB/s); nil: off.
    public var headTimeout: Duration?
    /// Bytes of unfinished frames (received, waiting for the rest of their frame) the server holds across all its
    /// connections. Above it the connection whose bytes crossed the budget is closed. Default 64 MiB (16 frames of
    /// the default maximum body); 0: no budget.
    public var partialFrameBudgetBytes: Int
    /// The server logs each kind of refusal (idle, head timeout, budget, unknown message ids) once per episode: an
    /// event after this long without one of its kind starts a new episode, with a new line. Default 10 s.
    public var logQuietInterval: Duration

    public init(server: ServerConfiguration = ServerConfiguration(),
                maxBodyLength: Int = FrameParser.defaultMaxBodyLength,
                idleTimeout: Duration? = .seconds(300),
                headTimeout: Duration? = .seconds(10),
                partialFrameBudgetBytes: Int = 64 << 20,
                logQuietInterval: Duration = .seconds(10)) {
        self.server = server
        self.maxBodyLength = maxBodyLength
        self.idleTimeout = idleTimeout
        self.headTimeout = headTimeout
        self.partialFrameBudgetBytes = partialFrameBudgetBytes
        self.logQuietInterval = logQuietInterval
    }
}

/// swift-metrics counters of a framed server's bounds (no-ops until the executable bootstraps a backend), with the
/// dimension `server`: the label of the server's logger (`switchyard.names`, `switchyard.chat`...).
struct FramedServerMetrics: Sendable {
    let idleClosed: Counter
    let headTimeouts: Counter
    let budgetClosed: Counter
    let unknownMessages: Counter

    init(server: String, factory: MetricsFactory) {
        let dimensions = [("server", server)]
        func counter(_ label: String) -> Counter {
            // The handler is made by `factory` (a test's, or the global one): no global bootstrap needed.
            Counter(label: label, dimensions: dimensions,
                    handler: factory.makeCounter(label: label, dimensions: dimensions))
        }
        idleClosed = counter("switchyard_framed_idle_closed_total")
        headTimeouts = counter("switchyard_framed_head_timeout_closed_total")
        budgetClosed = counter("switchyard_framed_budget_closed_total")
        unknownMessages = counter("switchyard_framed_unknown_messages_total")
    }
}

/// A TCP server speaking Lars frames: a `TCPServer` whose bytes are cut into frames and routed by message id.
///
/// ```swift
/// let router = MessageRouter<TCPConnection>()
/// try router.on(MessageID.getRouteRequest, as: Lars_GetRouteRequest.self) { request, message in
///     message.connection.send(reply, id: MessageID.getRouteResponse)
/// }
/// let server = FramedServer(group: group, router: router)
/// try server.start()
/// ```
///
/// Peers are held to three bounds by default (`FramedServerConfiguration`): silence (idle timeout), a frame that
/// does not complete (head timeout), and the bytes of unfinished frames across the server (budget). Each closes
/// the peer, is counted in `statistics` and in a swift-metrics counter (`switchyard_framed_idle_closed_total`,
/// `switchyard_framed_head_timeout_closed_total`, `switchyard_framed_budget_closed_total`, dimension `server`: the
/// logger's label), and is logged once per episode. Frames with an id that has no route are counted
/// (`switchyard_framed_unknown_messages_total`), logged once per episode across the connections, and the connection
/// stays open.
public final class FramedServer: Sendable {
    public let tcp: TCPServer
    public let router: MessageRouter<TCPConnection>
    public let configuration: FramedServerConfiguration
    public let statistics = FrameStatistics()
    private let reaper: ConnectionReaper?

    /// Creates the server; nothing is bound until `start()`. The counters go to `metricsFactory` (the global
    /// swift-metrics backend by default; a test passes its own), named by `logger`'s label.
    public init(
        group: EventLoopGroup, configuration: FramedServerConfiguration = FramedServerConfiguration(),
        router: MessageRouter<TCPConnection>,
        logger: Logger = Logger(label: "switchyard.server", factory: { _ in SwiftLogNoOpLogHandler() }),
        metricsFactory: MetricsFactory = MetricsSystem.factory,
        onConnect: @escaping @Sendable (TCPConnection) -> Void = { _ in },
        onClose: @escaping @Sendable (TCPConnection) -> Void = { _ in }
    ) {
        self.router = router
        self.configuration = configuration
        let metrics = FramedServerMetrics(server: logger.label, factory: metricsFactory)
        let quiet = configuration.logQuietInterval
        let partials = PartialFrames(budget: configuration.partialFrameBudgetBytes, statistics: statistics,
                                     counter: metrics.budgetClosed, logger: logger, quietInterval: quiet)
        var dispatcher = FrameDispatcher(router: router, maxBodyLength: configuration.maxBodyLength,
                                         logger: logger, statistics: statistics, partials: partials)
        dispatcher.unknownLog = UnknownMessageLog(logger: logger, counter: metrics.unknownMessages,
                                                  quietInterval: quiet)
        dispatcher.answersHeartbeats = true
        let idleNs = configuration.idleTimeout.map { $0.nanosecondsSaturated } ?? 0
        let headNs = configuration.headTimeout.map { $0.nanosecondsSaturated } ?? 0
        let reaper = idleNs > 0 || headNs > 0
            ? ConnectionReaper(idleNs: idleNs, headNs: headNs, loops: group.ioLoops, statistics: statistics,
                               metrics: metrics, logger: logger, quietInterval: quiet)
            : nil
        self.reaper = reaper
        tcp = TCPServer(
            group: group, configuration: configuration.server,
            callbacks: ConnectionCallbacks(
                onConnect: { connection in
                    reaper?.track(connection)
                    onConnect(connection)
                },
                onData: { [dispatcher] connection, bytes in dispatcher.handle(connection, &bytes) },
                onClose: { connection in
                    reaper?.forget(connection)
                    partials.forget(connection)
                    onClose(connection)
                }),
            logger: logger)
    }

    /// Fixes the routes, binds and starts accepting. Returns the bound address.
    @discardableResult
    public func start() throws -> SocketAddress {
        try configuration.validate()
        router.freeze()
        return try tcp.start()
    }

    /// Stops accepting, flushes and closes every connection (bounded wait). Blocks; not on a loop thread.
    public func shutdown(timeout: Duration = .seconds(5)) {
        tcp.shutdown(timeout: timeout)
    }

    public var localAddress: SocketAddress? { tcp.localAddress }
    public var connectionCount: Int { tcp.connectionCount }
}

/// The bytes of unfinished frames across a server's connections, against its budget. Safe from any loop: the total
/// is an atomic, each connection's share lives in its `FrameSession` (touched on its loop only).
final class PartialFrames: Sendable {
    let budget: Int
    let total = Atomic<Int>(0)
    let statistics: FrameStatistics
    let counter: Counter
    let logger: Logger
    private let overBudget: Mutex<LogEpisode>

    init(budget: Int, statistics: FrameStatistics, counter: Counter, logger: Logger, quietInterval: Duration) {
        self.budget = budget
        self.statistics = statistics
        self.counter = counter
        self.logger = logger
        overBudget = Mutex(LogEpisode(quietInterval: quietInterval))
    }

    /// The connection now holds `held` bytes of an unfinished frame (0: none); `frameStarted` when they begin a new
    /// frame (an earlier one completed in this read, or nothing was held before). Loop thread of `connection`.
    func update(_ connection: TCPConnection, held: Int, frameStarted: Bool) {
        let session = FrameDispatcher.session(of: connection)
        let delta = held - session.heldBytes
        session.heldBytes = held
        if held == 0 {
            session.partialSince = 0
        } else if frameStarted || session.partialSince == 0 {
            session.partialSince = connection.loop.wakeTime
        }
        if delta == 0 { return }
        let now = total.wrappingAdd(delta, ordering: .relaxed).newValue
        statistics.partialBytes.store(now, ordering: .relaxed)
        guard delta > 0, budget > 0, now > budget else { return }
        statistics.budgetClosedIn.wrappingAdd(1, ordering: .relaxed)
        counter.increment()
        let step = overBudget.withLock { $0.record(now: SystemInfo.monotonicNanoseconds()) }
        if case .started(let ended) = step {
            if ended > 0 {
                logger.info("closed connections over the partial frame budget", metadata: ["count": "\(ended)"])
            }
            logger.info("unfinished frames over budget, closing the connection that crossed it (once per episode)",
                        metadata: ["peer.address": "\(connection.peerAddress)", "connection.id": "\(connection.id)",
                                   "partial.bytes": "\(now)", "budget.bytes": "\(budget)"])
        }
        connection.forceClose()
    }

    /// The connection closed: its share leaves the total. Loop thread of `connection`.
    func forget(_ connection: TCPConnection) {
        guard let session = connection.protocolState as? FrameSession, session.heldBytes != 0 else { return }
        let now = total.wrappingSubtract(session.heldBytes, ordering: .relaxed).newValue
        statistics.partialBytes.store(now, ordering: .relaxed)
        session.heldBytes = 0
        session.partialSince = 0
    }
}

/// Closes connections that have been silent for longer than the idle timeout, or whose unfinished frame is older
/// than the head timeout: each I/O loop checks its own connections on a timer (a quarter of the shorter timeout, at
/// most every second) that runs while the loop has connections of this server. The episodes are shared by the
/// loops, so their clock is read under their lock (one loop's older sweep time would look like a quiet interval).
final class ConnectionReaper: @unchecked Sendable {
    // @unchecked Sendable: `perLoop[i]` is touched only on its loop's thread; the map itself is immutable.
    final class LoopConnections: @unchecked Sendable {
        // @unchecked Sendable: each instance belongs to one loop and is touched only on it.
        var connections: [UInt64: TCPConnection] = [:]
        var timer: TimerHandle?
    }

    let idleNs: UInt64
    let headNs: UInt64
    let periodNs: UInt64
    let perLoop: [ObjectIdentifier: LoopConnections]
    let statistics: FrameStatistics
    let metrics: FramedServerMetrics
    let logger: Logger
    private let idleEpisode: Mutex<LogEpisode>
    private let headEpisode: Mutex<LogEpisode>

    init(idleNs: UInt64, headNs: UInt64, loops: [EventLoop], statistics: FrameStatistics,
         metrics: FramedServerMetrics, logger: Logger, quietInterval: Duration) {
        self.idleNs = idleNs
        self.headNs = headNs
        let shortest = min(idleNs == 0 ? .max : idleNs, headNs == 0 ? .max : headNs)
        periodNs = min(max(shortest / 4, 1_000_000), 1_000_000_000)
        var map: [ObjectIdentifier: LoopConnections] = [:]
        for loop in loops { map[ObjectIdentifier(loop)] = LoopConnections() }
        perLoop = map
        self.statistics = statistics
        self.metrics = metrics
        self.logger = logger
        idleEpisode = Mutex(LogEpisode(quietInterval: quietInterval))
        headEpisode = Mutex(LogEpisode(quietInterval: quietInterval))
    }

    /// Loop thread of `connection`.
    func track(_ connection: TCPConnection) {
        guard let state = perLoop[ObjectIdentifier(connection.loop)] else { return }
        state.connections[connection.id] = connection
        if state.timer == nil {
            let loop = connection.loop
            state.timer = loop.scheduleRepeating(every: .nanoseconds(Int64(periodNs))) { [weak self] in
                self?.sweep(state)
            }
        }
    }

    /// Loop thread of `connection`.
    func forget(_ connection: TCPConnection) {
        guard let state = perLoop[ObjectIdentifier(connection.loop)] else { return }
        state.connections[connection.id] = nil
        if state.connections.isEmpty {
            state.timer?.cancel()
            state.timer = nil
        }
    }

    private func sweep(_ state: LoopConnections) {
        let now = SystemInfo.monotonicNanoseconds()
        var idle: [TCPConnection] = []
        var stalled: [TCPConnection] = []
        for connection in state.connections.values where connection.isActive {
            if idleNs > 0 && now &- connection.lastReceiveTime > idleNs {
                idle.append(connection)
            } else if headNs > 0, let session = connection.protocolState as? FrameSession, session.partialSince != 0,
                      now &- session.partialSince > headNs {
                stalled.append(connection)
            }
        }
        report(idle, episode: idleEpisode, counter: statistics.idleClosedIn, metric: metrics.idleClosed,
               what: "closing connections silent for longer than the idle timeout")
        report(stalled, episode: headEpisode, counter: statistics.headTimeoutsIn,
               metric: metrics.headTimeouts,
               what: "closing connections whose frame did not complete within the head timeout")
        for connection in idle + stalled { connection.forceClose() }
    }

    /// One line when an episode of such closes starts (the first peer), one with the count when it ends.
    private func report(_ closing: [TCPConnection], episode: borrowing Mutex<LogEpisode>,
                        counter: borrowing Atomic<Int>, metric: Counter,
                        what: Logger.Message) {
        if closing.isEmpty {
            if let ended = episode.withLock({ $0.endIfQuiet(now: SystemInfo.monotonicNanoseconds()) }) {
                logger.info("\(what): episode over", metadata: ["count": "\(ended)"])
            }
            return
        }
        counter.wrappingAdd(closing.count, ordering: .relaxed)
        metric.increment(by: closing.count)
        var started: Int?
        episode.withLock { e in
            let now = SystemInfo.monotonicNanoseconds()
            for _ in closing { if case .started(let ended) = e.record(now: now) { started = ended } }
        }
        guard let ended = started else { return }
        if ended > 0 { logger.info("\(what): episode over", metadata: ["count": "\(ended)"]) }
        logger.info("\(what) (logged once per episode)",
                    metadata: ["peer.address": "\(closing[0].peerAddress)", "connection.id": "\(closing[0].id)",
                               "count": "\(closing.count)"])
    }
}

/// Frames with an id that has no route, across a server's connections: counted, and logged once per episode (the
/// first such frame after the quiet interval without one), not once per connection. Safe from any loop.
final class UnknownMessageLog: Sendable {
    let logger: Logger
    let counter: Counter
    private let episode: Mutex<LogEpisode>

    init(logger: Logger, counter: Counter, quietInterval: Duration) {
        self.logger = logger
        self.counter = counter
        episode = Mutex(LogEpisode(quietInterval: quietInterval))
    }

    /// One frame of `id` had no route. Loop thread of `connection`.
    func record(_ connection: TCPConnection, id: Int32) {
        counter.increment()
        let step = episode.withLock { $0.record(now: SystemInfo.monotonicNanoseconds()) }
        guard case .started(let ended) = step else { return }
        if ended > 0 {
            logger.info("frames with message ids that have no handler: episode over", metadata: ["count": "\(ended)"])
        }
        logger.info("message id has no handler (logged once per episode)",
                    metadata: ["peer.address": "\(connection.peerAddress)", "connection.id": "\(connection.id)",
                               "message.id": "\(id)"])
    }
}

extension FramedServer {
    /// Sends a frame to one connection by id. Safe to call from any thread. False if there is no such connection.
    @discardableResult
    public func sendFrame(to connectionID: UInt64, messageID: Int32, body: [UInt8]) -> Bool {
        tcp.sendFrame(to: connectionID, messageID: messageID, body: body)
    }

    /// Sends a protobuf message to one connection by id. Safe to call from any thread.
    @discardableResult
    public func send<M: SwiftProtobuf.Message>(_ message: M, id: some FrameMessageID, to connectionID: UInt64) -> Bool {
        tcp.send(message, id: id, to: connectionID)
    }

    /// Sends a frame to every connection. Safe to call from any thread.
    public func broadcastFrame(messageID: Int32, body: [UInt8]) { tcp.broadcastFrame(messageID: messageID, body: body) }

    /// Sends a protobuf message to every connection. Safe to call from any thread.
    public func broadcast<M: SwiftProtobuf.Message>(_ message: M, id: some FrameMessageID) { tcp.broadcast(message, id: id) }
}
