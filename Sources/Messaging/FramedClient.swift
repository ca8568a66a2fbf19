import LarsWire
import Logging
import Reactor
import SwiftProtobuf
import SwitchyardCore

/// Configuration of a `FramedClient`.
public struct FramedClientConfiguration: Sendable {
    /// Address, timeouts, reconnect policy.
    public var client: ClientConfiguration
    public var maxBodyLength: Int
    /// When set, a heartbeat frame (`ReservedMessageID.heartbeat`) is sent whenever the client has sent nothing for this
    /// long, so a server's idle timeout does not close a quiet but healthy connection.
    public var heartbeatInterval: Duration?

    public init(client: ClientConfiguration, maxBodyLength: Int = FrameParser.defaultMaxBodyLength,
                heartbeatInterval: Duration? = nil) {
        self.client = client
        self.maxBodyLength = maxBodyLength
        self.heartbeatInterval = heartbeatInterval
    }
}

/// A TCP client speaking Lars frames, with the same router as servers, reconnects, and optional heartbeats.
public final class FramedClient: Sendable {
    public let tcp: TCPClient
    public let router: MessageRouter<TCPConnection>
    public let statistics = FrameStatistics()

    public init(
        loop: EventLoop, configuration: FramedClientConfiguration, router: MessageRouter<TCPConnection>,
        logger: Logger = Logger(label: "switchyard.client", factory: { _ in SwiftLogNoOpLogHandler() }),
        onConnect: @escaping @Sendable (TCPConnection) -> Void = { _ in },
        onClose: @escaping @Sendable (TCPConnection) -> Void = { _ in },
        onConnectFailed: (@Sendable (Error) -> Void)? = nil
    ) throws {
        self.router = router
        let dispatcher = FrameDispatcher(router: router, maxBodyLength: configuration.maxBodyLength,
                                         logger: logger, statistics: statistics)
        let interval = configuration.heartbeatInterval
        tcp = try TCPClient(
            loop: loop, configuration: configuration.client,
            callbacks: ConnectionCallbacks(
                onConnect: { connection in
                    if let interval { FramedClient.startHeartbeats(connection, interval: interval) }
                    onConnect(connection)
                },
                onData: { connection, bytes in dispatcher.handle(connection, &bytes) },
                onClose: { connection in
                    (connection.protocolState as? FrameSession)?.heartbeatTimer?.cancel()
                    onClose(connection)
                }),
            logger: logger,
            onConnectFailed: onConnectFailed)
    }

    /// Fixes the routes and starts connecting (and reconnecting, if configured). Safe to call from any thread.
    public func connect() {
        router.freeze()
        tcp.connect()
    }

    /// Stops reconnecting and closes after flushing. Safe to call from any thread.
    public func disconnect() { tcp.disconnect() }

    /// The current connection, if connected. Safe to call from any thread.
    public var connection: TCPConnection? { tcp.connection }

    /// Sends a frame on the current connection. Safe to call from any thread. False when not connected.
    @discardableResult
    public func sendFrame(messageID: Int32, body: [UInt8]) -> Bool {
        guard let c = connection else { return false }
        return c.sendFrame(messageID: messageID, body: body)
    }

    /// Sends a protobuf message on the current connection. Safe to call from any thread.
    @discardableResult
    public func send<M: SwiftProtobuf.Message>(_ message: M, id: some FrameMessageID) -> Bool {
        guard let c = connection else { return false }
        return c.send(message, id: id)
    }

    static func startHeartbeats(_ connection: TCPConnection, interval: Duration) {
        let session = FrameDispatcher.session(of: connection)
        let policy = HeartbeatPolicy(interval: interval)
        session.heartbeatTimer = connection.loop.scheduleRepeating(every: policy.checkInterval) { [weak connection] in
            guard let connection, connection.isActive else { return }
            let now = SystemInfo.monotonicNanoseconds()
            // The server's idle timeout decides about silence; this side only keeps the connection warm.
            if policy.decide(now: now, lastSent: connection.lastSendTime, lastReceived: now) == .sendHeartbeat {
                connection.sendFrameInLoop(messageID: ReservedMessageID.heartbeat, body: UnsafeRawBufferPointer(start: nil, count: 0))
            }
        }
    }
}
