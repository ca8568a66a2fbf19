/// Program-specific information: the PAT (which PID carries the program map) and the PMT (which PIDs carry the
/// program's streams), ISO/IEC 13818-1 2.4.4. Sections may span packets; `SectionAssembler` joins them and checks
/// their CRC, so a damaged table is ignored rather than believed.
struct SectionAssembler {
    /// Largest section the PAT and PMT may have (section_length is at most 1021).
    static let maxSectionBytes = 1024
    private var buffer: [UInt8] = []
    private var expected = 0

    /// Feeds one packet's payload; returns the sections (table_id through CRC) completed by it.
    mutating func feed(_ payload: UnsafeRawBufferPointer, unitStart: Bool) -> [[UInt8]] {
        var sections: [[UInt8]] = []
        var offset = 0
        if unitStart {
            guard payload.count >= 1 else { return [] }
            let pointer = Int(payload[0])
            offset = 1
            // The bytes before the pointer end the section in progress.
            if expected > 0 {
                let end = min(offset + pointer, payload.count)
                buffer.append(contentsOf: payload[offset..<end])
                if let done = takeIfComplete() { sections.append(done) }
            }
            buffer.removeAll(keepingCapacity: true)
            expected = 0
            offset += pointer
            guard offset + 3 <= payload.count, payload[offset] != 0xFF else { return sections }
            let length = Int(payload[offset + 1] & 0x0F) << 8 | Int(payload[offset + 2])
            guard length >= 9, length + 3 <= Self.maxSectionBytes else { return sections }
            expected = length + 3
            buffer.append(contentsOf: payload[offset..<min(offset + expected, payload.count)])
        } else if expected > 0 {
            let wanted = expected - buffer.count
            buffer.append(contentsOf: payload[0..<min(wanted, payload.count)])
        }
        if let done = takeIfComplete() { sections.append(done) }
        return sections
    }

    private mutating func takeIfComplete() -> [UInt8]? {
        guard expected > 0, buffer.count >= expected else { return nil }
        let section = Array(buffer[0..<expected])
        buffer.removeAll(keepingCapacity: true)
        expected = 0
        return CRC32MPEG2.checksum(section) == 0 ? section : nil
    }
}

/// The CRC-32 of MPEG-2 sections (polynomial 0x04C11DB7, MSB first, initial value 0xFFFFFFFF, no final XOR): a
/// section including its CRC field sums to zero.
enum CRC32MPEG2 {
    private static let table: [UInt32] = (0..<256).map { i in
        var c = UInt32(i) << 24
        for _ in 0..<8 { c = c & 0x8000_0000 != 0 ? (c << 1) ^ 0x04C1_1DB7 : c << 1 }
        return c
    }

    static func checksum(_ bytes: some Sequence<UInt8>) -> UInt32 {
        var crc: UInt32 = 0xFFFF_FFFF
        for b in bytes { crc = (crc << 8) ^ table[Int(UInt8(crc >> 24) ^ b)] }
        return crc
    }
}

/// The program map of one program: its streams and the PID that carries its clock.
public struct ProgramMap: Equatable, Sendable {
    public struct Stream: Equatable, Sendable {
        public let pid: UInt16
        public let kind: TSConstants.StreamKind
    }
    public let pcrPID: UInt16
    public let streams: [Stream]

    /// The first video stream, else the first stream: the one chunks are cut and paced by.
    public var clockStream: Stream? { streams.first { $0.kind.isVideo } ?? streams.first }
}

enum PSI {
    /// The PMT PID of the first program in a PAT section (program 0 is the network PID, not a program).
    static func pmtPID(fromPAT section: [UInt8]) -> UInt16? {
        guard section.count >= 12, section[0] == 0x00 else { return nil }
        var i = 8
        while i + 4 <= section.count - 4 {
            let program = UInt16(section[i]) << 8 | UInt16(section[i + 1])
            let pid = UInt16(section[i + 2] & 0x1F) << 8 | UInt16(section[i + 3])
            if program != 0 { return pid }
            i += 4
        }
        return nil
    }

    /// The streams of a PMT section.
    static func programMap(fromPMT section: [UInt8]) -> ProgramMap? {
        guard section.count >= 16, section[0] == 0x02 else { return nil }
        let pcrPID = UInt16(section[8] & 0x1F) << 8 | UInt16(section[9])
        let infoLength = Int(section[10] & 0x0F) << 8 | Int(section[11])
        var i = 12 + infoLength
        let end = section.count - 4
        var streams: [ProgramMap.Stream] = []
        while i + 5 <= end {
            let type = section[i]
            let pid = UInt16(section[i + 1] & 0x1F) << 8 | UInt16(section[i + 2])
            let esInfo = Int(section[i + 3] & 0x0F) << 8 | Int(section[i + 4])
            streams.append(ProgramMap.Stream(pid: pid, kind: TSConstants.StreamKind(streamType: type)))
            i += 5 + esInfo
        }
        return ProgramMap(pcrPID: pcrPID, streams: streams)
    }
}

/// The timestamps of a PES packet header (2.4.3.7), in 90 kHz ticks (33 bits).
enum PESHeader {
    /// (PTS, DTS) of a PES packet that starts at `payload`, when its header carries them.
    static func timestamps(_ payload: UnsafeRawBufferPointer) -> (pts: UInt64?, dts: UInt64?) {
        guard payload.count >= 9, payload[0] == 0, payload[1] == 0, payload[2] == 1 else { return (nil, nil) }
        let streamID = payload[3]
        // Streams without the optional header (padding, private 2, ECM/EMM, directories...).
        if [0xBC, 0xBE, 0xBF, 0xF0, 0xF1, 0xF2, 0xF8, 0xFF].contains(streamID) { return (nil, nil) }
        guard payload[6] & 0xC0 == 0x80 else { return (nil, nil) }
        let flags = payload[7] >> 6
        let headerLength = Int(payload[8])
        guard 9 + headerLength <= payload.count else { return (nil, nil) }
        func read(_ at: Int) -> UInt64? {
            guard at + 5 <= 9 + headerLength else { return nil }
            let b = (0..<5).map { UInt64(payload[at + $0]) }
            return ((b[0] >> 1) & 0x07) << 30 | b[1] << 22 | (b[2] >> 1) << 15 | b[3] << 7 | b[4] >> 1
        }
        switch flags {
        case 2: return (read(9), nil)
        case 3: return (read(9), read(14))
        default: return (nil, nil)
        }
    }

    /// Offset of the elementary stream bytes after the PES header, when the header fits in `payload`.
    static func dataOffset(_ payload: UnsafeRawBufferPointer) -> Int? {
        guard payload.count >= 9, payload[0] == 0, payload[1] == 0, payload[2] == 1 else { return nil }
        let offset = 9 + Int(payload[8])
        return offset <= payload.count ? offset : nil
    }
}

/// Random access points found in elementary stream bytes, for streams whose muxer does not set the random access
/// indicator: an H.264 IDR or SPS, an HEVC IRAP or VPS, an MPEG-1/2 sequence header.
enum RandomAccess {
    static func startsAccessPoint(_ data: UnsafeRawBufferPointer, kind: TSConstants.StreamKind) -> Bool {
        var i = 0
        while i + 3 < data.count {
            if data[i] == 0, data[i + 1] == 0, data[i + 2] == 1 {
                let code = data[i + 3]
                switch kind {
                case .h264:
                    let type = code & 0x1F
                    if type == 5 || type == 7 { return true }
                case .hevc:
                    let type = (code >> 1) & 0x3F
                    if (16...21).contains(type) || type == 32 { return true }
                case .mpeg2Video, .mpeg1Video:
                    if code == 0xB3 { return true }
                default:
                    return true
                }
                i += 3
            } else {
                i += 1
            }
        }
        return !kind.isVideo
    }
}
