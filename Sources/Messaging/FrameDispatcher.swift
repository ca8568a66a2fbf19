import LarsWire
import Logging
import Reactor
import Synchronization

/// Per-connection state of the messaging layer (in `TCPConnection.protocolState`). Loop thread only.
final class FrameSession {
    var loggedUnknown = false
    var heartbeatTimer: TimerHandle?
    /// Bytes of an unfinished frame counted against the server's budget (`PartialFrames`).
    var heldBytes = 0
    /// When the unfinished frame's first byte arrived (monotonic ns; 0: none), for the head timeout.
    var partialSince: UInt64 = 0
}

/// Counters of a framed server or client. Safe to read from any thread.
public final class FrameStatistics: Sendable {
    let framesIn = Atomic<Int>(0)
    let heartbeatsIn = Atomic<Int>(0)
    let unknownIn = Atomic<Int>(0)
    let protocolErrorsIn = Atomic<Int>(0)
    let idleClosedIn = Atomic<Int>(0)
    let headTimeoutsIn = Atomic<Int>(0)
    let budgetClosedIn = Atomic<Int>(0)
    let partialBytes = Atomic<Int>(0)
    let silentClosedIn = Atomic<Int>(0)

    /// Frames handed to handlers (heartbeats not included).
    public var frames: Int { framesIn.load(ordering: .relaxed) }
    /// Heartbeat frames received.
    public var heartbeats: Int { heartbeatsIn.load(ordering: .relaxed) }
    /// Frames with an id that has no route.
    public var unknownMessages: Int { unknownIn.load(ordering: .relaxed) }
    /// Connections closed for a bad frame (length out of range, undecodable body, a handler's protocol error).
    public var protocolErrors: Int { protocolErrorsIn.load(ordering: .relaxed) }
    /// Connections closed for silence (a server's idle timeout).
    public var idleClosed: Int { idleClosedIn.load(ordering: .relaxed) }
    /// Connections closed because a frame did not complete within the head timeout.
    public var headTimeouts: Int { headTimeoutsIn.load(ordering: .relaxed) }
    /// Connections closed because the server's unfinished frames went over its budget.
    public var budgetClosed: Int { budgetClosedIn.load(ordering: .relaxed) }
    /// Connections a client closed because its server stayed silent past the client's silence timeout.
    public var silentClosed: Int { silentClosedIn.load(ordering: .relaxed) }
    /// Bytes of unfinished frames the server holds now, across its connections.
    public var partialFrameBytes: Int { partialBytes.load(ordering: .relaxed) }
}

/// Cuts a TCP byte stream into frames and routes them. Shared by `FramedServer` and `FramedClient`.
struct FrameDispatcher: Sendable {
    let router: MessageRouter<TCPConnection>
    let maxBodyLength: Int
    let logger: Logger
    let statistics: FrameStatistics
    /// The server's budget of unfinished frames (nil for a client).
    var partials: PartialFrames? = nil
    /// A server answers each heartbeat frame with one, so a client can tell a silent server from a quiet one.
    var answersHeartbeats = false
    /// A server's log of unknown message ids, once per episode across its connections (nil for a client: once per
    /// connection).
    var unknownLog: UnknownMessageLog? = nil

    /// The data callback: whole frames are routed straight from the loop's buffer; a partial tail stays unconsumed
    /// (the connection keeps it). A bad frame closes the connection after one log line.
    @inline(__always)
    func handle(_ connection: TCPConnection, _ bytes: inout InboundBytes) {
        let decoder = FrameDecoder(maxBodyLength: maxBodyLength)
        let result: (consumed: Int, stop: FrameDecoder.Stop)
        do {
            result = try decoder.decode(bytes.readableView) { id, body in
                if id == ReservedMessageID.heartbeat {
                    statistics.heartbeatsIn.wrappingAdd(1, ordering: .relaxed)
                    if answersHeartbeats {
                        connection.sendFrameInLoop(messageID: ReservedMessageID.heartbeat,
                                                   body: UnsafeRawBufferPointer(start: nil, count: 0))
                    }
                    return true
                }
                statistics.framesIn.wrappingAdd(1, ordering: .relaxed)
                if try router.dispatch(messageID: id, body: body, connection: connection) == .unknown {
                    unknown(connection, id)
                }
                return connection.isActive
            }
        } catch {
            protocolError(connection, error)
            bytes.consumeAll()
            return
        }
        switch result.stop {
        case .needMore:
            bytes.moveReaderIndex(forwardBy: result.consumed)
            if let partials, bytes.carriedBytes > 0 || bytes.readableBytes > 0 {
                partials.update(connection, held: bytes.readableBytes,
                                frameStarted: result.consumed > 0 || bytes.carriedBytes == 0)
            }
        case .invalid(let error):
            protocolError(connection, error)
            bytes.consumeAll()
        case .stopped:
            bytes.consumeAll()
        }
    }

    private func protocolError(_ connection: TCPConnection, _ error: Error) {
        statistics.protocolErrorsIn.wrappingAdd(1, ordering: .relaxed)
        logger.info("protocol error, closing connection",
                       metadata: ["peer.address": "\(connection.peerAddress)", "connection.id": "\(connection.id)",
                                  "reason": "\(error)"])
        connection.forceClose()
    }

    private func unknown(_ connection: TCPConnection, _ id: Int32) {
        statistics.unknownIn.wrappingAdd(1, ordering: .relaxed)
        if let unknownLog {
            unknownLog.record(connection, id: id)
            return
        }
        let session = FrameDispatcher.session(of: connection)
        if !session.loggedUnknown {
            session.loggedUnknown = true
            logger.info("message id has no handler (logged once per connection)",
                        metadata: ["peer.address": "\(connection.peerAddress)", "connection.id": "\(connection.id)",
                                   "message.id": "\(id)"])
        }
    }

    static func session(of connection: TCPConnection) -> FrameSession {
        if let s = connection.protocolState as? FrameSession { return s }
        let s = FrameSession()
        connection.protocolState = s
        return s
    }
}
