// The Lars frame, decoded without copying. This file depends on the standard library only, so the fuzz target
// (Fuzz/FrameParserFuzz) compiles it on its own.
//
//  0               4               8
//  +---------------+---------------+---------------------------+
//  | message id    | body length   | body (length bytes)       |
//  | Int32, LE     | Int32, LE     | usually protobuf (proto3) |
//  +---------------+---------------+---------------------------+

/// Why bytes are not a valid frame.
public enum FrameError: Error, Equatable, Sendable, CustomStringConvertible {
    /// The header's body length is negative.
    case negativeLength(Int32)
    /// The header's body length is above the configured maximum.
    case bodyTooLarge(length: Int, limit: Int)
    /// A datagram's size is not 8 + the header's body length.
    case datagramSizeMismatch(size: Int, declaredBody: Int)
    /// A datagram shorter than the 8-byte header.
    case datagramTooShort(size: Int)

    public var description: String {
        switch self {
        case .negativeLength(let n): return "frame body length is negative (\(n))"
        case .bodyTooLarge(let length, let limit): return "frame body of \(length) bytes is above the limit of \(limit)"
        case .datagramSizeMismatch(let size, let body):
            return "datagram of \(size) bytes does not hold its header's 8 + \(body) bytes"
        case .datagramTooShort(let size): return "datagram of \(size) bytes is shorter than the 8-byte header"
        }
    }
}

/// Finds frames in contiguous bytes. Stateless: the caller keeps unconsumed bytes and calls again with more.
public enum FrameParser {
    /// Bytes of the header: message id and body length, both Int32 little-endian.
    public static let headerSize = 8
    /// Default maximum body on TCP (PROTOCOL.md).
    public static let defaultMaxBodyLength = 4 * 1024 * 1024
    /// Largest body a UDP datagram can carry.
    public static let maxDatagramBodyLength = 65_507 - 8

    /// The outcome of looking at the start of a byte range.
    public enum Outcome: Equatable, Sendable {
        /// A whole frame: its id, and its body at `headerSize ..< headerSize + bodyLength`.
        case frame(messageID: Int32, bodyLength: Int)
        /// Not enough bytes yet; at least this many are needed in all.
        case needMore(Int)
        /// The bytes cannot start a valid frame: close the connection.
        case invalid(FrameError)
    }

    /// Looks at the frame starting at `bytes[0]`.
    @inlinable
    public static func parse(_ bytes: UnsafeRawBufferPointer, maxBodyLength: Int) -> Outcome {
        guard bytes.count >= headerSize, let base = bytes.baseAddress else { return .needMore(headerSize) }
        let id = Int32(littleEndian: base.loadUnaligned(as: Int32.self))
        let length = Int32(littleEndian: base.loadUnaligned(fromByteOffset: 4, as: Int32.self))
        if length < 0 { return .invalid(.negativeLength(length)) }
        let bodyLength = Int(length)
        if bodyLength > maxBodyLength { return .invalid(.bodyTooLarge(length: bodyLength, limit: maxBodyLength)) }
        if bytes.count - headerSize < bodyLength { return .needMore(headerSize + bodyLength) }
        return .frame(messageID: id, bodyLength: bodyLength)
    }

    /// Checks that a datagram holds exactly one frame; returns its id and body (a view into `datagram`).
    @inlinable
    public static func parseDatagram(_ datagram: UnsafeRawBufferPointer, maxBodyLength: Int = maxDatagramBodyLength)
        -> Result<(messageID: Int32, body: UnsafeRawBufferPointer), FrameError>
    {
        guard datagram.count >= headerSize, let base = datagram.baseAddress else {
            return .failure(.datagramTooShort(size: datagram.count))
        }
        let id = Int32(littleEndian: base.loadUnaligned(as: Int32.self))
        let length = Int32(littleEndian: base.loadUnaligned(fromByteOffset: 4, as: Int32.self))
        if length < 0 { return .failure(.negativeLength(length)) }
        if Int(length) > maxBodyLength { return .failure(.bodyTooLarge(length: Int(length), limit: maxBodyLength)) }
        if datagram.count != headerSize + Int(length) {
            return .failure(.datagramSizeMismatch(size: datagram.count, declaredBody: Int(length)))
        }
        return .success((id, UnsafeRawBufferPointer(start: base + headerSize, count: Int(length))))
    }

    /// The 8 header bytes for a frame.
    @inlinable
    public static func header(messageID: Int32, bodyLength: Int) -> (UInt64) {
        UInt64(UInt32(bitPattern: messageID.littleEndian)) | (UInt64(UInt32(truncatingIfNeeded: bodyLength).littleEndian) << 32)
    }

    /// A whole frame as bytes (header + body).
    public static func encode(messageID: Int32, body: some Collection<UInt8>) -> [UInt8] {
        var out: [UInt8] = []
        out.reserveCapacity(headerSize + body.count)
        withUnsafeBytes(of: messageID.littleEndian) { out.append(contentsOf: $0) }
        withUnsafeBytes(of: Int32(body.count).littleEndian) { out.append(contentsOf: $0) }
        out.append(contentsOf: body)
        return out
    }
}
