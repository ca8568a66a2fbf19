import LarsWire
import Reactor
import SwiftProtobuf

extension TCPConnection {
    /// Sends one frame: the 8-byte header and the body in one writev when the socket takes it. Loop thread only.
    @discardableResult
    public func sendFrameInLoop(messageID: Int32, body: UnsafeRawBufferPointer) -> Bool {
        var header = FrameParser.header(messageID: messageID, bodyLength: body.count)
        return withUnsafeBytes(of: &header) { sendInLoop($0, body) }
    }

    /// Sends one frame. Safe to call from any thread.
    @discardableResult
    public func sendFrame(messageID: Int32, body: [UInt8]) -> Bool {
        if loop.inLoopThread {
            return body.withUnsafeBytes { sendFrameInLoop(messageID: messageID, body: $0) }
        }
        loop.execute { [self] in _ = body.withUnsafeBytes { sendFrameInLoop(messageID: messageID, body: $0) } }
        return true
    }

    /// Sends a protobuf message as the body of a frame with id `id`. Safe to call from any thread.
    @discardableResult
    public func send<M: SwiftProtobuf.Message>(_ message: M, id: some FrameMessageID) -> Bool {
        guard let body: [UInt8] = try? message.serializedBytes() else { return false }
        return sendFrame(messageID: id.rawValue, body: body)
    }
}

extension TCPServer {
    /// Sends a frame to one connection by id. Safe to call from any thread. False if there is no such connection.
    @discardableResult
    public func sendFrame(to connectionID: UInt64, messageID: Int32, body: [UInt8]) -> Bool {
        send(to: connectionID, FrameParser.encode(messageID: messageID, body: body))
    }

    /// Sends a protobuf message to one connection by id. Safe to call from any thread.
    @discardableResult
    public func send<M: SwiftProtobuf.Message>(_ message: M, id: some FrameMessageID, to connectionID: UInt64) -> Bool {
        guard let body: [UInt8] = try? message.serializedBytes() else { return false }
        return sendFrame(to: connectionID, messageID: id.rawValue, body: body)
    }

    /// Sends a frame to every connection. Safe to call from any thread.
    public func broadcastFrame(messageID: Int32, body: [UInt8]) {
        broadcast(FrameParser.encode(messageID: messageID, body: body))
    }

    /// Sends a protobuf message to every connection. Safe to call from any thread.
    public func broadcast<M: SwiftProtobuf.Message>(_ message: M, id: some FrameMessageID) {
        guard let body: [UInt8] = try? message.serializedBytes() else { return }
        broadcastFrame(messageID: id.rawValue, body: body)
    }
}
