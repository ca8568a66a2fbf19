import LarsWire
import Messaging
import Reactor
import SwiftProtobuf

/// An HTTP viewer: the chunks are the response body (a player reads a plain MPEG-TS stream). To an HTTP/1.1 client
/// the body is chunked (RFC 9112 section 7.1), so the end of the stream is a proper end of the body, not a close that
/// a player reports as a truncated download; each relay chunk is one HTTP chunk, its size line written with it in one
/// writev and its bytes straight from the shared array. To an HTTP/1.0 client the body ends with the connection.
final class HTTPViewerSink: ViewerSink, @unchecked Sendable {  // used on its connection's loop only
    let connection: TCPConnection
    let chunked: Bool
    private var sentAny = false

    init(connection: TCPConnection, chunked: Bool) {
        self.connection = connection
        self.chunked = chunked
    }

    /// The head of the response that starts a stream.
    static func responseHead(chunked: Bool) -> [UInt8] {
        Array(("HTTP/1.1 200 OK\r\nContent-Type: video/mp2t\r\nCache-Control: no-cache, no-store\r\n"
            + (chunked ? "Transfer-Encoding: chunked\r\n" : "") + "Connection: close\r\n\r\n").utf8)
    }

    func write(_ batch: [ChunkRing<UInt64>.Delivery]) -> Int {
        var arrays: [[UInt8]] = []
        arrays.reserveCapacity(batch.count * 3)
        for delivery in batch {
            if chunked {
                // The CRLF that ends the previous HTTP chunk goes with this one's size line.
                arrays.append(Array(((sentAny ? "\r\n" : "") + String(delivery.byteCount, radix: 16) + "\r\n").utf8))
                sentAny = true
            }
            arrays += delivery.pieces
        }
        return gatherSend(arrays, on: connection)
    }

    func end() {
        if chunked {
            let last = Array(((sentAny ? "\r\n" : "") + "0\r\n\r\n").utf8)
            _ = last.withUnsafeBytes { connection.sendInLoop($0) }
        }
        connection.close()
    }
}

/// A viewer of the frame protocol: each chunk is a Chunk frame (id 401) whose data field is the shared chunk itself:
/// the frame header and the small fields before the data are built per viewer, the data is written from the shared
/// array. The end of the stream is an EndOfStream frame (id 402), then the connection is closed.
final class FrameViewerSink: ViewerSink, @unchecked Sendable {  // used on its connection's loop only
    let connection: TCPConnection
    private var sent: UInt64 = 0

    init(connection: TCPConnection) { self.connection = connection }

    func write(_ batch: [ChunkRing<UInt64>.Delivery]) -> Int {
        var arrays: [[UInt8]] = []
        arrays.reserveCapacity(batch.count * 3)
        for delivery in batch {
            arrays.append(Self.chunkFramePrefix(sequence: delivery.sequence, time: delivery.chunk.time,
                                                keyframe: delivery.chunk.keyframe, dataLength: delivery.byteCount,
                                                messageID: MediaMessageID.chunk.rawValue))
            arrays += delivery.pieces
            sent += 1
        }
        return gatherSend(arrays, on: connection)
    }

    func end() {
        var message = Switchyard_Media_EndOfStream()
        message.chunks = sent
        if let body = try? message.serializedBytes() as [UInt8] {
            body.withUnsafeBytes { _ = connection.sendFrameInLoop(messageID: MediaMessageID.endOfStream.rawValue,
                                                                   body: $0) }
        }
        connection.close()
    }

    /// The Lars header and the protobuf fields of a Chunk up to its data's bytes: 1 sequence, 2 time_90khz,
    /// 3 keyframe, then the tag and length of 4 data (`dataLength` bytes follow).
    static func chunkFramePrefix(sequence: UInt64, time: UInt64, keyframe: Bool, dataLength: Int,
                                 messageID: Int32) -> [UInt8] {
        var fields: [UInt8] = []
        fields.reserveCapacity(32)
        if sequence != 0 { fields.append(0x08); appendVarint(sequence, to: &fields) }
        if time != 0 { fields.append(0x10); appendVarint(time, to: &fields) }
        if keyframe { fields += [0x18, 0x01] }
        if dataLength > 0 { fields.append(0x22); appendVarint(UInt64(dataLength), to: &fields) }
        var header = FrameParser.header(messageID: messageID, bodyLength: fields.count + dataLength)
        var out = withUnsafeBytes(of: &header) { Array($0) }
        out += fields
        return out
    }

    static func appendVarint(_ value: UInt64, to out: inout [UInt8]) {
        var v = value
        while v >= 0x80 {
            out.append(UInt8(truncatingIfNeeded: v) | 0x80)
            v >>= 7
        }
        out.append(UInt8(v))
    }
}

/// Writes the arrays in order with one gather write (no copy into one buffer); returns the bytes handed over (0 when
/// the connection is closed).
func gatherSend(_ arrays: [[UInt8]], on connection: TCPConnection) -> Int {
    var pointers: [UnsafeRawBufferPointer] = []
    pointers.reserveCapacity(arrays.count)
    let total = arrays.reduce(0) { $0 + $1.count }
    let ok = pinned(arrays[...], &pointers) { connection.sendInLoop(gathering: $0) }
    return ok ? total : 0
}

/// Calls `body` with pointers to every array's bytes, each valid for the call (nested `withUnsafeBytes`).
private func pinned(_ arrays: ArraySlice<[UInt8]>, _ pointers: inout [UnsafeRawBufferPointer],
                    _ body: ([UnsafeRawBufferPointer]) -> Bool) -> Bool {
    guard let first = arrays.first else { return body(pointers) }
    return first.withUnsafeBytes { bytes in
        pointers.append(bytes)
        return pinned(arrays.dropFirst(), &pointers, body)
    }
}
