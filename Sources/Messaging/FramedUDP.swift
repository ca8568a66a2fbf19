import LarsWire
import Logging
import Reactor
import SwiftProtobuf
import Synchronization

/// The sender of a datagram, as a handler sees it: reply with `send`, and the reply goes to that sender.
public struct UDPPeer: Sendable {
    public let channel: UDPChannel
    public let address: SocketAddress

    /// Sends one frame to this peer. Loop thread only (handlers run there).
    @discardableResult
    public func sendFrameInLoop(messageID: Int32, body: UnsafeRawBufferPointer) -> Bool {
        guard body.count <= FrameParser.maxDatagramBodyLength else { return false }
        var header = FrameParser.header(messageID: messageID, bodyLength: body.count)
        return withUnsafeBytes(of: &header) { channel.sendInLoop($0, body, to: address) }
    }

    /// Sends a protobuf message to this peer. Safe to call from any thread.
    @discardableResult
    public func send<M: SwiftProtobuf.Message>(_ message: M, id: some FrameMessageID) -> Bool {
        let id = id.rawValue
        guard let body: [UInt8] = try? message.serializedBytes(),
              body.count <= FrameParser.maxDatagramBodyLength else { return false }
        if channel.loop.inLoopThread {
            return body.withUnsafeBytes { sendFrameInLoop(messageID: id, body: $0) }
        }
        let peer = self
        channel.loop.execute { _ = body.withUnsafeBytes { peer.sendFrameInLoop(messageID: id, body: $0) } }
        return true
    }
}

/// Counters of a framed UDP endpoint. Safe to read from any thread.
public final class DatagramStatistics: Sendable {
    let framesIn = Atomic<Int>(0)
    let droppedIn = Atomic<Int>(0)
    let unknownIn = Atomic<Int>(0)
    let handlerErrorsIn = Atomic<Int>(0)
    /// Datagrams that carried a valid frame and were routed.
    public var frames: Int { framesIn.load(ordering: .relaxed) }
    /// Datagrams dropped because their size was not 8 + the header's body length (or was out of range).
    public var dropped: Int { droppedIn.load(ordering: .relaxed) }
    /// Frames whose id had no route.
    public var unknownMessages: Int { unknownIn.load(ordering: .relaxed) }
    /// Frames a handler rejected (an undecodable body, for instance): dropped.
    public var badBodies: Int { handlerErrorsIn.load(ordering: .relaxed) }
}

/// A UDP endpoint speaking Lars frames, one frame per datagram, on one or more ports of one loop. Used by servers
/// (the agent listens on three ports) and clients (one socket on port 0). Bad datagrams are dropped and counted;
/// the endpoint goes on.
public final class FramedUDPEndpoint: Sendable {
    public let loop: EventLoop
    public let channels: [UDPChannel]
    public let router: MessageRouter<UDPPeer>
    public let statistics = DatagramStatistics()

    /// Binds every port of `ports` on `host` (0: the kernel picks) and starts receiving on `loop`.
    public init(loop: EventLoop, host: String = "127.0.0.1", ports: [Int], router: MessageRouter<UDPPeer>,
                logger: Logger = Logger(label: "switchyard.udp", factory: { _ in SwiftLogNoOpLogHandler() })) throws {
        self.loop = loop
        self.router = router
        router.freeze()
        let stats = statistics
        let handler: UDPChannel.Handler = { channel, datagram, sender in
            switch FrameParser.parseDatagram(datagram) {
            case .failure:
                stats.droppedIn.wrappingAdd(1, ordering: .relaxed)
            case .success(let frame):
                stats.framesIn.wrappingAdd(1, ordering: .relaxed)
                do {
                    let result = try router.dispatch(messageID: frame.messageID, body: frame.body,
                                                     connection: UDPPeer(channel: channel, address: sender))
                    if result == .unknown { stats.unknownIn.wrappingAdd(1, ordering: .relaxed) }
                } catch {
                    stats.handlerErrorsIn.wrappingAdd(1, ordering: .relaxed)
                    logger.debug("datagram rejected", metadata: ["peer.address": "\(sender)", "reason": "\(error)"])
                }
            }
        }
        var opened: [UDPChannel] = []
        do {
            for port in ports {
                opened.append(try UDPChannel(loop: loop, host: host, port: port, handler: handler))
            }
        } catch {
            for c in opened { c.close() }
            throw error
        }
        channels = opened
    }

    /// The bound addresses, in the order of `ports`.
    public var localAddresses: [SocketAddress] { channels.map(\.localAddress) }

    /// Sends one frame from the first socket. Safe to call from any thread.
    public func sendFrame(messageID: Int32, body: [UInt8], to address: SocketAddress) {
        channels[0].send(FrameParser.encode(messageID: messageID, body: body), to: address)
    }

    /// Sends a protobuf message from the first socket. Safe to call from any thread.
    public func send<M: SwiftProtobuf.Message>(_ message: M, id: some FrameMessageID, to address: SocketAddress) {
        UDPPeer(channel: channels[0], address: address).send(message, id: id)
    }

    /// Closes every socket. Safe to call from any thread.
    public func close() {
        for c in channels { c.close() }
    }
}
