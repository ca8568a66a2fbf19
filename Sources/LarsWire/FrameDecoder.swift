/// Cuts a TCP byte stream into Lars frames: the one decoder behind the framed server's dispatcher, the async client,
/// `FrameAccumulator` (tests, drip-feeding, the fuzz target). It keeps no bytes: the caller keeps the unconsumed
/// tail (a connection's buffer, or the accumulator's array) and calls again when more bytes arrive.
///
///     bytes:  | frame | frame | frame | partial frame ...
///             ^-- onFrame(id, body) for each whole frame --^  consumed = 3 frames; stop = .needMore(n)
public struct FrameDecoder: Sendable {
    /// Largest body accepted; a header announcing more is `.invalid(.bodyTooLarge)`.
    public let maxBodyLength: Int

    public init(maxBodyLength: Int = FrameParser.defaultMaxBodyLength) {
        self.maxBodyLength = maxBodyLength
    }

    /// Why `decode` returned.
    public enum Stop: Equatable, Sendable {
        /// The bytes left start a frame that is not complete: at least this many are needed in all.
        case needMore(Int)
        /// The bytes left cannot start a valid frame: the stream is broken, close it.
        case invalid(FrameError)
        /// `onFrame` returned false.
        case stopped
    }

    /// Hands each whole frame at the start of `bytes` to `onFrame`, with its id and its body (a view into `bytes`,
    /// valid during the call only), until a partial frame, an invalid header, or `onFrame` returning false. Returns
    /// the bytes taken (whole frames only; an invalid header is not taken) and why it stopped. What `onFrame` throws
    /// is rethrown; the frame that threw counts as taken.
    @inlinable
    public func decode(
        _ bytes: UnsafeRawBufferPointer,
        _ onFrame: (_ messageID: Int32, _ body: UnsafeRawBufferPointer) throws -> Bool
    ) rethrows -> (consumed: Int, stop: Stop) {
        var offset = 0
        while true {
            let rest = UnsafeRawBufferPointer(rebasing: bytes[offset...])
            switch FrameParser.parse(rest, maxBodyLength: maxBodyLength) {
            case .needMore(let n):
                return (offset, .needMore(n))
            case .invalid(let error):
                return (offset, .invalid(error))
            case .frame(let id, let length):
                let body = UnsafeRawBufferPointer(rebasing: rest[FrameParser.headerSize..<FrameParser.headerSize + length])
                offset += FrameParser.headerSize + length
                if try !onFrame(id, body) { return (offset, .stopped) }
            }
        }
    }
}

/// Collects bytes as they arrive and hands out whole frames (through `FrameDecoder`): for code outside a loop that
/// gets bytes in pieces (tests, the fuzz target). One owner at a time.
public struct FrameAccumulator: Sendable {
    private var buffer: [UInt8] = []
    private var readIndex = 0
    public let decoder: FrameDecoder

    public init(maxBodyLength: Int = FrameParser.defaultMaxBodyLength) {
        decoder = FrameDecoder(maxBodyLength: maxBodyLength)
    }

    /// The largest body accepted.
    public var maxBodyLength: Int { decoder.maxBodyLength }

    /// Bytes held and not yet returned as frames.
    public var bufferedBytes: Int { buffer.count - readIndex }

    public mutating func append(_ bytes: some Sequence<UInt8>) {
        if readIndex > 0 && readIndex >= buffer.count / 2 {
            buffer.removeSubrange(0..<readIndex)
            readIndex = 0
        }
        buffer.append(contentsOf: bytes)
    }

    /// The next whole frame, nil if more bytes are needed; throws when the stream cannot be valid.
    public mutating func nextFrame() throws(FrameError) -> (messageID: Int32, body: [UInt8])? {
        let start = readIndex
        var frame: (messageID: Int32, body: [UInt8])?
        let (consumed, stop) = buffer.withUnsafeBytes { raw in
            decoder.decode(UnsafeRawBufferPointer(rebasing: raw[start...])) { id, body in
                frame = (id, Array(body))
                return false
            }
        }
        readIndex += consumed
        if case .invalid(let error) = stop { throw error }
        return frame
    }
}
