import LarsWire
import Logging
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
    /// A connection silent (nothing received, heartbeats included) for longer is closed. Off when nil (default).
    public var idleTimeout: Duration?

    public init(server: ServerConfiguration = ServerConfiguration(),
                maxBodyLength: Int = FrameParser.defaultMaxBodyLength,
                idleTimeout: Duration? = nil) {
        self.server = server
        self.maxBodyLength = maxBodyLength
        self.idleTimeout = idleTimeout
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
public final class FramedServer: Sendable {
    public let tcp: TCPServer
    public let router: MessageRouter<TCPConnection>
    public let configuration: FramedServerConfiguration
    public let statistics = FrameStatistics()
    private let idle: IdleReaper?

    public init(
        group: EventLoopGroup, configuration: FramedServerConfiguration = FramedServerConfiguration(),
        router: MessageRouter<TCPConnection>,
        logger: Logger = Logger(label: "switchyard.server", factory: { _ in SwiftLogNoOpLogHandler() }),
        onConnect: @escaping @Sendable (TCPConnection) -> Void = { _ in },
        onClose: @escaping @Sendable (TCPConnection) -> Void = { _ in }
    ) {
        self.router = router
        self.configuration = configuration
        let dispatcher = FrameDispatcher(router: router, maxBodyLength: configuration.maxBodyLength,
                                         logger: logger, statistics: statistics)
        let idle = configuration.idleTimeout.map { IdleReaper(timeout: $0, loops: group.ioLoops,
                                                              logger: logger) }
        self.idle = idle
        tcp = TCPServer(
            group: group, configuration: configuration.server,
            callbacks: ConnectionCallbacks(
                onConnect: { connection in
                    idle?.track(connection)
                    onConnect(connection)
                },
                onData: { connection, bytes in dispatcher.handle(connection, &bytes) },
                onClose: { connection in
                    idle?.forget(connection)
                    onClose(connection)
                }),
            logger: logger)
    }

    /// Fixes the routes, binds and starts accepting. Returns the bound address.
    @discardableResult
    public func start() throws -> SocketAddress {
        try configuration.validate()
        router.freeze()
        let address = try tcp.start()
        idle?.start()
        return address
    }

    /// Stops accepting, flushes and closes every connection (bounded wait). Blocks; not on a loop thread.
    public func shutdown(timeout: Duration = .seconds(5)) {
        idle?.stop()
        tcp.shutdown(timeout: timeout)
    }

    public var localAddress: SocketAddress? { tcp.localAddress }
    public var connectionCount: Int { tcp.connectionCount }
}

/// Closes connections that have been silent for longer than a timeout: each I/O loop checks its own connections
/// on a timer (a quarter of the timeout, at most every second).
final class IdleReaper: @unchecked Sendable {
    // @unchecked Sendable: `perLoop[i]` is touched only on `loops[i]`'s thread; the arrays themselves are immutable.
    final class LoopConnections: @unchecked Sendable {
        // @unchecked Sendable: each instance belongs to one loop and is touched only on it.
        var connections: [UInt64: TCPConnection] = [:]
        var timer: TimerHandle?
    }

    let timeoutNs: UInt64
    let loops: [EventLoop]
    let perLoop: [ObjectIdentifier: LoopConnections]
    let logger: Logger
    let closedCount = Atomic<Int>(0)

    init(timeout: Duration, loops: [EventLoop], logger: Logger) {
        timeoutNs = timeout.nanosecondsSaturated
        self.loops = loops
        var map: [ObjectIdentifier: LoopConnections] = [:]
        for loop in loops { map[ObjectIdentifier(loop)] = LoopConnections() }
        perLoop = map
        self.logger = logger
    }

    func track(_ connection: TCPConnection) {
        perLoop[ObjectIdentifier(connection.loop)]?.connections[connection.id] = connection
    }

    func forget(_ connection: TCPConnection) {
        perLoop[ObjectIdentifier(connection.loop)]?.connections[connection.id] = nil
    }

    func start() {
        let period = Duration.nanoseconds(Int64(min(max(timeoutNs / 4, 1_000_000), 1_000_000_000)))
        for loop in loops {
            loop.execute { [self] in
                guard let state = perLoop[ObjectIdentifier(loop)] else { return }
                state.timer = loop.scheduleRepeating(every: period) { [self] in sweep(loop, state) }
            }
        }
    }

    func stop() {
        for loop in loops {
            loop.execute { [self] in
                perLoop[ObjectIdentifier(loop)]?.timer?.cancel()
                perLoop[ObjectIdentifier(loop)]?.timer = nil
            }
        }
    }

    private func sweep(_ loop: EventLoop, _ state: LoopConnections) {
        let now = SystemInfo.monotonicNanoseconds()
        for connection in state.connections.values where now &- connection.lastReceiveTime > timeoutNs {
            logger.info("closing idle connection",
                        metadata: ["peer.address": "\(connection.peerAddress)", "connection.id": "\(connection.id)"])
            closedCount.wrappingAdd(1, ordering: .relaxed)
            connection.forceClose()
        }
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
