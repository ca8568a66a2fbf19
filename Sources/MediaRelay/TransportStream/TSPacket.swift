/// One 188-byte MPEG transport stream packet, parsed in place (ISO/IEC 13818-1, 2.4.3).
///
///     byte 0     1            2        3                  4 ...
///          0x47  |TEI|PUSI|P|PID(13)   |SC(2)|AFC(2)|CC(4)| [adaptation field] [payload]
///
/// The adaptation field (AFC 2 or 3) starts with its length; its flags byte holds the random access indicator
/// (a keyframe starts in this packet) and the PCR flag (a 42-bit program clock reference follows: a 33-bit base at
/// 90 kHz, 6 reserved bits, a 9-bit extension at 27 MHz).
public struct TSPacket {
    /// Bytes in a packet.
    public static let size = 188
    /// The first byte of every packet.
    public static let syncByte: UInt8 = 0x47

    public let pid: UInt16
    /// `payload_unit_start_indicator`: a PES packet or a section starts in this payload.
    public let payloadUnitStart: Bool
    /// The packet is marked as damaged in transit (`transport_error_indicator`).
    public let transportError: Bool
    /// Scrambled payloads cannot be read (the relay passes them on but cannot pace by them).
    public let scrambled: Bool
    public let continuityCounter: UInt8
    /// `random_access_indicator`: the next PES packet of this PID starts at a random access point.
    public let randomAccess: Bool
    /// `discontinuity_indicator`: the stream's clock jumps here.
    public let discontinuity: Bool
    /// The program clock reference in 27 MHz ticks (base * 300 + extension), when the packet carries one.
    public let pcr: UInt64?
    /// Offset of the payload in the packet (`size` when there is none).
    public let payloadOffset: Int

    /// Why bytes are not a transport stream packet.
    public enum ParseError: Error, Equatable, Sendable {
        /// Fewer than 188 bytes.
        case short
        /// The first byte is not 0x47.
        case noSync
        /// The adaptation field's length runs past the packet, or AFC is the reserved value 0.
        case badAdaptationField
    }

    /// Parses the packet at the start of `bytes` (at least 188 bytes are read).
    public init(_ bytes: UnsafeRawBufferPointer) throws(ParseError) {
        guard bytes.count >= Self.size else { throw .short }
        guard bytes[0] == Self.syncByte else { throw .noSync }
        transportError = bytes[1] & 0x80 != 0
        payloadUnitStart = bytes[1] & 0x40 != 0
        pid = UInt16(bytes[1] & 0x1F) << 8 | UInt16(bytes[2])
        scrambled = bytes[3] & 0xC0 != 0
        let control = (bytes[3] >> 4) & 0x3
        continuityCounter = bytes[3] & 0x0F
        guard control != 0 else { throw .badAdaptationField }
        var offset = 4
        var randomAccess = false
        var discontinuity = false
        var pcr: UInt64?
        if control & 0x2 != 0 {
            let length = Int(bytes[4])
            // With a payload the field leaves at least one byte of it (2.4.3.5: 0...182); without, it fills the packet.
            guard length <= (control == 3 ? 182 : 183) else { throw .badAdaptationField }
            if length > 0 {
                let flags = bytes[5]
                discontinuity = flags & 0x80 != 0
                randomAccess = flags & 0x40 != 0
                if flags & 0x10 != 0 && length >= 7 {
                    let base = UInt64(bytes[6]) << 25 | UInt64(bytes[7]) << 17 | UInt64(bytes[8]) << 9
                        | UInt64(bytes[9]) << 1 | UInt64(bytes[10] >> 7)
                    let ext = UInt64(bytes[10] & 0x01) << 8 | UInt64(bytes[11])
                    pcr = base * 300 + ext
                }
            }
            offset = 5 + length
        }
        self.randomAccess = randomAccess
        self.discontinuity = discontinuity
        self.pcr = pcr
        payloadOffset = control & 0x1 != 0 ? offset : Self.size
    }

    /// True when the packet has payload bytes.
    public var hasPayload: Bool { payloadOffset < Self.size }
}

/// Well-known PIDs and stream types of ISO/IEC 13818-1 (Table 2-3, Table 2-34).
public enum TSConstants {
    public static let patPID: UInt16 = 0x0000
    public static let nullPID: UInt16 = 0x1FFF

    /// What a PMT's stream_type says about an elementary stream.
    public enum StreamKind: Equatable, Sendable {
        case h264, hevc, mpeg2Video, mpeg1Video
        case aac, mpegAudio, ac3
        case other(UInt8)

        public init(streamType: UInt8) {
            switch streamType {
            case 0x1B: self = .h264
            case 0x24: self = .hevc
            case 0x02: self = .mpeg2Video
            case 0x01: self = .mpeg1Video
            case 0x0F, 0x11: self = .aac
            case 0x03, 0x04: self = .mpegAudio
            case 0x81: self = .ac3
            default: self = .other(streamType)
            }
        }

        public var isVideo: Bool {
            switch self {
            case .h264, .hevc, .mpeg2Video, .mpeg1Video: return true
            default: return false
            }
        }

        /// The name ffprobe uses for the codec.
        public var codecName: String {
            switch self {
            case .h264: return "h264"
            case .hevc: return "hevc"
            case .mpeg2Video: return "mpeg2video"
            case .mpeg1Video: return "mpeg1video"
            case .aac: return "aac"
            case .mpegAudio: return "mp2"
            case .ac3: return "ac3"
            case .other(let t): return "stream type 0x\(String(t, radix: 16))"
            }
        }
    }
}
