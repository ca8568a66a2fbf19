import DequeModule
import LarsWire
import Messaging
import Reactor
import SwiftProtobuf

/// What a viewer has been handed and its socket has not taken yet. The bytes stay where they are, in the shared
/// chunks (references, no copy); they are handed to the connection at most `queueLimit` bytes at a time, and only
/// while its output queue is empty. So what the socket does not take, and the connection copies into its queue, is
/// at most `queueLimit` bytes per viewer, however far behind the viewer is and however large its batch:
///
///     batch: [head][chunk 1 ........][size][chunk 2 ....]      shared arrays (the ring's, no copy per viewer)
///             \____ one send, <= queueLimit ___/ \__ pending (references) __/
///                   |  written by the kernel, the unwritten tail copied into the queue (<= queueLimit)
///
/// Loop thread of its connection only.
final class ViewerOutput {
    let connection: TCPConnection
    let queueLimit: Int
    private var pending: Deque<ArraySlice<UInt8>> = []
    /// Bytes handed to the output and not to the connection yet.
    private(set) var pendingBytes = 0

    init(connection: TCPConnection, queueLimit: Int) {
        self.connection = connection
        self.queueLimit = queueLimit
    }

    /// Adds `arrays` after what is pending (references only) and hands what it can to the connection.
    func write(_ arrays: [[UInt8]]) -> Int {
        for array in arrays where !array.isEmpty {
            pending.append(array[...])
            pendingBytes += array.count
        }
        return flush()
    }

    /// Hands pending bytes to the connection while its output queue stays empty (the kernel took everything),
    /// `queueLimit` bytes at a time; returns the bytes handed over. A closed connection drops what is pending.
    func flush() -> Int {
        var handed = 0
        while !pending.isEmpty && connection.queuedOutputBytes == 0 {
            var pieces: [ArraySlice<UInt8>] = []
            var size = 0
            while size < queueLimit, let first = pending.first {
                let take = min(first.count, queueLimit - size)
                if take == first.count {
                    pieces.append(first)
                    pending.removeFirst()
                } else {
                    pieces.append(first.prefix(take))
                    pending[pending.startIndex] = first.dropFirst(take)
                }
                size += take
            }
            pendingBytes -= size
            guard gatherSend(pieces, on: connection) > 0 else {
                pending.removeAll()
                pendingBytes = 0
                break
            }
            handed += size
        }
        return handed
    }

    /// Nothing pending and nothing queued: the viewer has taken everything it was handed.
    var isDrained: Bool { pending.isEmpty && connection.queuedOutputBytes == 0 }
}

/// An HTTP viewer: the chunks are the response body (a player reads a plain MPEG-TS stream). To an HTTP/1.1 client
/// the body is chunked (RFC 9112 section 7.1), so the end of the stream is a proper end of the body, not a close that
/// a player reports as a truncated download; each relay chunk is one HTTP chunk, its size line written with it in one
/// writev and its bytes straight from the shared array. To an HTTP/1.0 client the body ends with the connection.
final class HTTPViewerSink: ViewerSink, @unchecked Sendable {  // used on its connection's loop only
    let output: ViewerOutput
    let chunked: Bool
    private var sentAny = false

    init(connection: TCPConnection, chunked: Bool, queueLimit: Int) {
        output = ViewerOutput(connection: connection, queueLimit: queueLimit)
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
        return output.write(arrays)
    }

    func end() {
        let connection = self.connection
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
    let output: ViewerOutput
    private var sent: UInt64 = 0

    init(connection: TCPConnection, queueLimit: Int) {
        output = ViewerOutput(connection: connection, queueLimit: queueLimit)
    }

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
        return output.write(arrays)
    }

    func end() {
        let connection = self.connection
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
func gatherSend(_ arrays: [ArraySlice<UInt8>], on connection: TCPConnection) -> Int {
    var pointers: [UnsafeRawBufferPointer] = []
    pointers.reserveCapacity(arrays.count)
    let total = arrays.reduce(0) { $0 + $1.count }
    let ok = pinned(arrays[...], &pointers) { connection.sendInLoop(gathering: $0) }
    return ok ? total : 0
}

/// Calls `body` with pointers to every array's bytes, each valid for the call (nested `withUnsafeBytes`).
private func pinned(_ arrays: ArraySlice<ArraySlice<UInt8>>, _ pointers: inout [UnsafeRawBufferPointer],
                    _ body: ([UnsafeRawBufferPointer]) -> Bool) -> Bool {
    guard let first = arrays.first else { return body(pointers) }
    return first.withUnsafeBytes { bytes in
        pointers.append(bytes)
        return pinned(arrays.dropFirst(), &pointers, body)
    }
}
