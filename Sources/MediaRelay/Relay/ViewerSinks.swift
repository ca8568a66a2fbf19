import DequeModule
import LarsWire
import Messaging
import Reactor
import SwiftProtobuf

/// One piece of a viewer's stream: bytes of an array (a size line, a frame header, a chunk), or bytes of the
/// playback's shared memory file (the regions of consecutive chunks, sent with sendfile).
enum OutputPiece {
    case bytes(ArraySlice<UInt8>)
    case file(FileSpan)

    var count: Int {
        switch self {
        case .bytes(let bytes): return bytes.count
        case .file(let span): return span.count
        }
    }
}

/// A file a viewer's bytes can be sent from with sendfile: a playback's shared memory file, or the media file itself.
protocol SendFileSource: AnyObject, Sendable {
    var descriptor: Int32 { get }
}

extension BroadcastFile: SendFileSource {}

/// Consecutive bytes of a file to send: of a `BroadcastFile`, kept alive by the regions they come from, or of the media
/// file itself (no regions: its bytes stay where they are).
struct FileSpan {
    let file: any SendFileSource
    /// The next byte to send, and the end.
    var offset: Int64
    var end: Int64
    /// The regions from `offset` to `end`, in order (they keep the bytes in a `BroadcastFile`).
    var regions: [BroadcastFile.Region]

    init(_ region: BroadcastFile.Region) {
        file = region.file
        offset = region.offset
        end = region.end
        regions = [region]
    }

    /// `count` bytes of `file` from `offset`.
    init(_ file: MediaSourceFile, offset: Int64, count: Int) {
        self.file = file
        self.offset = offset
        end = offset + Int64(count)
        regions = []
    }

    var count: Int { Int(end - offset) }

    /// Adds `region` when it starts where this span ends (the next chunk of the same file).
    mutating func extend(with region: BroadcastFile.Region) -> Bool {
        guard region.file === file, region.offset == end else { return false }
        end = region.end
        regions.append(region)
        return true
    }

    /// Adds `count` bytes of `source` from `at` when they start where this span ends.
    mutating func extend(with source: MediaSourceFile, at start: Int64, count: Int) -> Bool {
        guard source === file, start == end else { return false }
        end += Int64(count)
        return true
    }

    /// Adds `other` when it starts where this span ends.
    mutating func extend(with other: FileSpan) -> Bool {
        guard other.file === file, other.offset == end else { return false }
        end = other.end
        regions += other.regions
        return true
    }

    /// `n` bytes were sent: drops the regions now wholly behind.
    mutating func advance(by n: Int) {
        offset += Int64(n)
        var gone = 0
        while gone < regions.count, regions[gone].end <= offset { gone += 1 }
        if gone > 0 { regions.removeFirst(gone) }
    }
}

/// What a viewer has been handed and its socket has not taken yet. The bytes stay where they are, in the shared
/// chunks (references, no copy); array bytes are handed to the connection at most `queueLimit` bytes at a time, and
/// only while its output queue is empty, and shared-memory bytes go by sendfile straight from the file's pages (the
/// kernel references them; nothing is copied or queued). So what the socket does not take, and the connection
/// copies into its queue, is at most `queueLimit` bytes per viewer, however far behind the viewer is and however
/// large its batch:
///
///     batch: [size][chunks 1-6 in the shared file .....][head][chunk 7 .......]    (references, no copy)
///             \_ sendmsg(MSG_MORE) + sendfile, as the socket takes them _/ \__ pending __/
///
/// Loop thread of its connection only.
final class ViewerOutput {
    let connection: TCPConnection
    let queueLimit: Int
    private let counters: RelayCounters?
    private var pending: Deque<OutputPiece> = []
    /// Bytes handed to the output and not to the connection yet.
    private(set) var pendingBytes = 0

    init(connection: TCPConnection, queueLimit: Int, counters: RelayCounters? = nil) {
        self.connection = connection
        self.queueLimit = queueLimit
        self.counters = counters
    }

    /// Adds `pieces` after what is pending (references only; a region that continues the last pending span joins
    /// it, so consecutive chunks go in one sendfile) and hands what it can to the connection.
    func write(_ pieces: [OutputPiece]) -> Int {
        for piece in pieces where piece.count > 0 {
            if case .file(let span) = piece, case .file(var last)? = pending.last, last.extend(with: span) {
                pending[pending.index(before: pending.endIndex)] = .file(last)
            } else {
                pending.append(piece)
            }
            pendingBytes += piece.count
        }
        return flush()
    }

    /// Adds arrays after what is pending and hands what it can to the connection.
    func write(_ arrays: [[UInt8]]) -> Int {
        write(arrays.map { .bytes($0[...]) })
    }

    /// Hands pending bytes to the connection while its output queue stays empty (the kernel took everything):
    /// array bytes `queueLimit` at a time, shared-memory bytes by sendfile until the socket is full. Returns the
    /// bytes handed over. A closed connection drops what is pending.
    func flush() -> Int {
        var handed = 0
        while let first = pending.first, connection.queuedOutputBytes == 0 {
            if case .file(var span) = first {
                guard let n = connection.sendFileInLoop(span.file.descriptor, offset: span.offset, count: span.count)
                else {
                    dropAll()
                    break
                }
                handed += n
                pendingBytes -= n
                counters?.add(.sharedBytesSent, n)
                if n == span.count {
                    pending.removeFirst()
                    continue
                }
                span.advance(by: n)
                pending[pending.startIndex] = .file(span)
                break  // the socket is full
            }
            var pieces: [ArraySlice<UInt8>] = []
            var size = 0
            while size < queueLimit, case .bytes(let bytes)? = pending.first {
                let take = min(bytes.count, queueLimit - size)
                if take == bytes.count {
                    pieces.append(bytes)
                    pending.removeFirst()
                } else {
                    pieces.append(bytes.prefix(take))
                    pending[pending.startIndex] = .bytes(bytes.dropFirst(take))
                }
                size += take
            }
            pendingBytes -= size
            // Framing bytes before shared-memory bytes wait for them in the kernel: both leave in the same segments.
            var moreFollows = false
            if case .file? = pending.first { moreFollows = true }
            guard gatherSend(pieces, on: connection, moreFollows: moreFollows) > 0 else {
                dropAll()
                break
            }
            handed += size
        }
        return handed
    }

    private func dropAll() {
        pending.removeAll()
        pendingBytes = 0
    }

    /// Nothing pending and nothing queued: the viewer has taken everything it was handed.
    var isDrained: Bool { pending.isEmpty && connection.queuedOutputBytes == 0 }
}

/// An HTTP viewer: the chunks are the response body (a player reads a plain MPEG-TS stream). To an HTTP/1.1 client
/// the body is chunked (RFC 9112 section 7.1), so the end of the stream is a proper end of the body, not a close that
/// a player reports as a truncated download; each batch is one HTTP chunk, its size line sent with MSG_MORE and its
/// bytes by sendfile from the playback's shared memory file (or from the shared arrays without one). To an HTTP/1.0
/// client the body ends with the connection.
final class HTTPViewerSink: ViewerSink, @unchecked Sendable {  // used on its connection's loop only
    let output: ViewerOutput
    let chunked: Bool
    private var sentAny = false

    init(connection: TCPConnection, chunked: Bool, queueLimit: Int, counters: RelayCounters? = nil) {
        output = ViewerOutput(connection: connection, queueLimit: queueLimit, counters: counters)
        self.chunked = chunked
    }

    /// The head of the response that starts a stream.
    static func responseHead(chunked: Bool) -> [UInt8] {
        Array(("HTTP/1.1 200 OK\r\nContent-Type: video/mp2t\r\nCache-Control: no-cache, no-store\r\n"
            + (chunked ? "Transfer-Encoding: chunked\r\n" : "") + "Connection: close\r\n\r\n").utf8)
    }

    /// To an HTTP/1.1 client the batch is one HTTP chunk: its size line (sent with MSG_MORE), then the chunks, from
    /// the shared memory file when the playback has one (consecutive chunks are one range of it: one sendfile), else
    /// from the shared arrays (one writev). To an HTTP/1.0 client, the chunks alone.
    func write(_ batch: [ChunkRing<UInt64>.Delivery]) -> Int {
        var pieces: [OutputPiece] = []
        pieces.reserveCapacity(batch.count * 2 + 1)
        if chunked {
            let total = batch.reduce(0) { $0 + $1.byteCount }
            guard total > 0 else { return 0 }
            // The CRLF that ends the previous HTTP chunk goes with this one's size line.
            pieces.append(.bytes(Array(((sentAny ? "\r\n" : "") + String(total, radix: 16) + "\r\n").utf8)[...]))
            sentAny = true
        }
        // Consecutive regions of the file become one span here (one sendfile), without a piece each.
        var span: FileSpan?
        for delivery in batch {
            if delivery.withProgramHeader && !delivery.chunk.programHeader.isEmpty {
                if let done = span { pieces.append(.file(done)) }
                span = nil
                pieces.append(.bytes(delivery.chunk.programHeader[...]))
            }
            let chunk = delivery.chunk
            if let source = chunk.sourceFile, let start = chunk.sourceOffset {
                if span?.extend(with: source, at: start, count: chunk.bytes.count) != true {
                    if let done = span { pieces.append(.file(done)) }
                    span = FileSpan(source, offset: start, count: chunk.bytes.count)
                }
            } else if let region = chunk.shared {
                if span?.extend(with: region) != true {
                    if let done = span { pieces.append(.file(done)) }
                    span = FileSpan(region)
                }
            } else {
                if let done = span { pieces.append(.file(done)) }
                span = nil
                pieces.append(.bytes(delivery.chunk.bytes[...]))
            }
        }
        if let done = span { pieces.append(.file(done)) }
        return output.write(pieces)
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
func gatherSend(_ arrays: [ArraySlice<UInt8>], on connection: TCPConnection, moreFollows: Bool = false) -> Int {
    var pointers: [UnsafeRawBufferPointer] = []
    pointers.reserveCapacity(arrays.count)
    let total = arrays.reduce(0) { $0 + $1.count }
    let ok = pinned(arrays[...], &pointers) { connection.sendInLoop(gathering: $0, moreFollows: moreFollows) }
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
