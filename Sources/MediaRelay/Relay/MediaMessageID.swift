import LarsWire

/// Frame ids of the media relay protocol (PROTOCOL.md: 400+), with the protobuf body of each (Protos/media.proto).
///
/// | id  | name          | direction          | body                             |
/// |----:|---------------|--------------------|----------------------------------|
/// | 400 | subscribe     | viewer -> relay    | `Switchyard_Media_Subscribe`     |
/// | 401 | chunk         | relay -> viewer    | `Switchyard_Media_Chunk`         |
/// | 402 | end of stream | relay -> viewer    | `Switchyard_Media_EndOfStream`   |
/// | 403 | error         | relay -> peer      | `Switchyard_Media_Error`         |
/// | 404 | publish chunk | publisher -> relay | `Switchyard_Media_Chunk`         |
/// | 405 | publish       | publisher -> relay | `Switchyard_Media_Publish`       |
///
/// A viewer sends one subscribe and then only reads; the relay closes the connection after an end of stream or an
/// error. A publisher sends one publish, then its stream as publish chunks (the bytes matter, the other fields are
/// the relay's own business: it cuts the stream again); closing the connection ends the stream.
public struct MediaMessageID: FrameMessageID {
    public let rawValue: Int32
    public init(rawValue: Int32) { self.rawValue = rawValue }

    public static let subscribe = MediaMessageID(rawValue: 400)
    public static let chunk = MediaMessageID(rawValue: 401)
    public static let endOfStream = MediaMessageID(rawValue: 402)
    public static let error = MediaMessageID(rawValue: 403)
    public static let publishChunk = MediaMessageID(rawValue: 404)
    public static let publish = MediaMessageID(rawValue: 405)
}
