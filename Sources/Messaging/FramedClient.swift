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
    /// With a heartbeat interval: the connection is closed when nothing (not even the answer to a heartbeat: our
    /// servers answer each one) arrived for this long, so a hung server is left like a lost one (and, with
    /// `client.alternates`, the next address is tried). A heartbeat is also sent when nothing arrived for the
    /// interval. Nil: a silent server is waited for (Lars's servers do not answer heartbeats).
    public var silenceTimeout: Duration?

    public init(client: ClientConfiguration, maxBodyLength: Int = FrameParser.defaultMaxBodyLength,
                heartbeatInterval: Duration? = nil, silenceTimeout: Duration? = nil) {
        self.client = client
        self.maxBodyLength = maxBodyLength
        self.heartbeatInterval = heartbeatInterval
        self.silenceTimeout = silenceTimeout
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
        let silence = configuration.silenceTimeout
        let statistics = self.statistics
        tcp = try TCPClient(
            loop: loop, configuration: configuration.client,
            callbacks: ConnectionCallbacks(
                onConnect: { connection in
                    if let interval {
                        FramedClient.startHeartbeats(connection, interval: interval, silenceTimeout: silence,
                                                     logger: logger, statistics: statistics)
                    }
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

    static func startHeartbeats(_ connection: TCPConnection, interval: Duration, silenceTimeout: Duration? = nil,
                                logger: Logger? = nil, statistics: FrameStatistics? = nil) {
        let session = FrameDispatcher.session(of: connection)
        let policy = HeartbeatPolicy(interval: interval, silenceTimeout: silenceTimeout)
        let intervalNs = interval.nanosecondsSaturated
        session.heartbeatTimer = connection.loop.scheduleRepeating(every: policy.checkInterval) { [weak connection] in
            guard let connection, connection.isActive else { return }
            let now = SystemInfo.monotonicNanoseconds()
            // Without a silence timeout the server's idle timeout decides about silence; this side only keeps the
            // connection warm. With one, a quiet server is probed (it answers) and a silent one is left.
            let received = silenceTimeout == nil ? now : connection.lastReceiveTime
            switch policy.decide(now: now, lastSent: connection.lastSendTime, lastReceived: received) {
            case .peerSilent:
                statistics?.silentClosedIn.wrappingAdd(1, ordering: .relaxed)
                logger?.info("server silent past the timeout: connection closed", metadata: [
                    "peer.address": "\(connection.peerAddress)", "silence.timeout": "\(silenceTimeout!)"])
                connection.forceClose()
            case .sendHeartbeat:
                connection.sendFrameInLoop(messageID: ReservedMessageID.heartbeat,
                                           body: UnsafeRawBufferPointer(start: nil, count: 0))
            case .idle:
                if silenceTimeout != nil, now &- connection.lastReceiveTime >= intervalNs,
                   now &- connection.lastSendTime >= intervalNs / 2 {
                    connection.sendFrameInLoop(messageID: ReservedMessageID.heartbeat,
                                               body: UnsafeRawBufferPointer(start: nil, count: 0))
                }
            }
        }
    }
}
