import NIOCore

/// One Lars frame: the message id and the body (a slice of the read buffer, not a copy).
struct LarsFrame {
    var id: Int32
    var body: ByteBuffer
}

/// Protocol errors of the framed echo.
enum LarsFrameError: Error {
    /// The header's body length is negative or above the maximum.
    case badLength(Int32)
}

/// Splits the byte stream into Lars frames:
///
/// ```
///  0               4               8
///  +---------------+---------------+------------------+
///  | message id    | body length   | body             |
///  | Int32, LE     | Int32, LE     | (length bytes)   |
///  +---------------+---------------+------------------+
/// ```
struct LarsFrameDecoder: ByteToMessageDecoder {
    typealias InboundOut = LarsFrame

    static let headerSize = 8
    /// Largest body accepted (PROTOCOL.md's TCP default).
    var maximumBodyLength: Int32 = 4 * 1024 * 1024

    mutating func decode(context: ChannelHandlerContext, buffer: inout ByteBuffer) throws -> DecodingState {
        guard
            let id = buffer.getInteger(at: buffer.readerIndex, endianness: .little, as: Int32.self),
            let length = buffer.getInteger(at: buffer.readerIndex + 4, endianness: .little, as: Int32.self)
        else { return .needMoreData }
        guard length >= 0, length <= maximumBodyLength else { throw LarsFrameError.badLength(length) }
        guard buffer.readableBytes >= Self.headerSize + Int(length) else { return .needMoreData }
        buffer.moveReaderIndex(forwardBy: Self.headerSize)
        let body = buffer.readSlice(length: Int(length))!
        context.fireChannelRead(Self.wrapInboundOut(LarsFrame(id: id, body: body)))
        return .continue
    }

    mutating func decodeLast(
        context: ChannelHandlerContext, buffer: inout ByteBuffer, seenEOF: Bool
    ) throws -> DecodingState {
        while try decode(context: context, buffer: &buffer) == .continue {}
        return .needMoreData
    }
}
