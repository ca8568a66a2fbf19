// libFuzzer target for the media relay's transport stream parsers: TSPacket, SectionAssembler, PSI, PESHeader and
// TSChunker (internal ones through @testable import). Built by scripts/fuzz (Fuzz/Package.swift).
//
// Input: a mode byte, a byte for how the stream is cut into pieces, then either the stream itself (raw mode) or a
// script the harness turns into one: PAT and PMT sections with valid CRCs (one packet or several, sometimes
// damaged), PES starts with PTS/DTS, PCRs, random access and discontinuity flags and start codes, continuation,
// null, damaged and truncated packets, and garbage between packets. Raw bytes alone would almost never get past the
// section CRCs to a program, so most runs are scripted.
//
// The stream goes to TSChunker whole, and in pieces (of sizes around a packet's, read from the stream, growing, or
// one byte at a time: the cutting byte says which). Checked: both give the same chunks and counters; the packets the chunker reads and the bytes it skips are those of a plain reading of its documented
// rule (sync where two sync bytes stand 188 apart, a packet that does not parse is skipped a byte at a time); the
// chunks' bytes, concatenated, are exactly the packets read, in order (or nothing, when no frame ever had a time:
// untimed bytes wait for the first timed frame); every chunk is whole packets; its program header is the PAT and PMT
// packets and only on keyframes; consecutive chunk times differ by at most `maxFrameGap` (a longer jump is a
// discontinuity and time goes on from where it was); the chunk and keyframe counts match what was returned. The
// section assembler, the PSI readers and the PES header reader also get every packet's payload directly.
import FuzzSupport
@testable import MediaRelay

// MARK: - Building streams

/// Writes TS packets: an adaptation field when flags, a PCR or stuffing need one.
struct StreamBuilder {
    var bytes: [UInt8] = []
    var counters: [UInt16: UInt8] = [:]
    var packetCount = 0
    /// The script's media clock (90 kHz, 33 bits).
    var clock: UInt64 = 900_000

    /// Flags of an adaptation field (ISO/IEC 13818-1, 2.4.3.5).
    struct Adaptation {
        var discontinuity = false
        var randomAccess = false
        var pcr: UInt64?
        var isEmpty: Bool { !discontinuity && !randomAccess && pcr == nil }
    }

    /// One 188-byte packet; a payload too long for the packet is cut.
    static func packet(pid: UInt16, unitStart: Bool, counter: UInt8, adaptation: Adaptation = Adaptation(),
                       payload: [UInt8], transportError: Bool = false, scrambling: UInt8 = 0) -> [UInt8] {
        var fields: [UInt8] = []
        if !adaptation.isEmpty {
            var flags: UInt8 = 0
            if adaptation.discontinuity { flags |= 0x80 }
            if adaptation.randomAccess { flags |= 0x40 }
            fields = [flags]
            if let pcr = adaptation.pcr {
                fields[0] |= 0x10
                let base = (pcr / 300) & ((1 << 33) - 1), ext = pcr % 300
                fields += [UInt8(base >> 25 & 0xFF), UInt8(base >> 17 & 0xFF), UInt8(base >> 9 & 0xFF),
                           UInt8(base >> 1 & 0xFF), UInt8((base & 1) << 7) | 0x7E | UInt8(ext >> 8),
                           UInt8(ext & 0xFF)]
            }
        }
        let data = Array(payload.prefix(fields.isEmpty ? 184 : 183 - fields.count))
        var header: [UInt8] = [TSPacket.syncByte,
                               (transportError ? 0x80 : 0) | (unitStart ? 0x40 : 0) | UInt8(pid >> 8 & 0x1F),
                               UInt8(pid & 0xFF)]
        let scramble = (scrambling & 0x3) << 6
        if fields.isEmpty && data.count == 184 {
            header.append(scramble | 0x10 | counter & 0x0F)
            return header + data
        }
        let fieldLength = 183 - data.count  // adaptation field bytes after its length byte
        header.append(scramble | (data.isEmpty ? 0x20 : 0x30) | counter & 0x0F)
        var field = fields + [UInt8](repeating: 0xFF, count: fieldLength - fields.count)
        if fieldLength > 0 && fields.isEmpty { field[0] = 0 }  // a flags byte with no flags, then stuffing
        return header + [UInt8(fieldLength)] + field + data
    }

    mutating func append(pid: UInt16, unitStart: Bool, adaptation: Adaptation = Adaptation(), payload: [UInt8],
                         transportError: Bool = false, scrambling: UInt8 = 0) {
        let counter = counters[pid, default: 0]
        counters[pid] = (counter + 1) & 0x0F
        bytes += Self.packet(pid: pid, unitStart: unitStart, counter: counter, adaptation: adaptation,
                             payload: payload, transportError: transportError, scrambling: scrambling)
        packetCount += 1
    }

    /// A section (table_id through CRC) in as many packets as it takes, after a pointer field.
    mutating func appendSection(_ section: [UInt8], pid: UInt16, pointerFill: [UInt8]) {
        var rest = [UInt8(pointerFill.count)] + pointerFill + section
        var first = true
        while !rest.isEmpty {
            let piece = Array(rest.prefix(184))
            rest.removeFirst(piece.count)
            append(pid: pid, unitStart: first, payload: piece)
            first = false
        }
    }
}

/// A 33-bit timestamp in the five bytes of a PES header, with its 4-bit prefix and marker bits.
func timestampBytes(_ ts: UInt64, prefix: UInt8) -> [UInt8] {
    [prefix << 4 | UInt8(ts >> 29 & 0x0E) | 1, UInt8(ts >> 22 & 0xFF), UInt8(ts >> 14 & 0xFE) | 1,
     UInt8(ts >> 7 & 0xFF), UInt8(ts << 1 & 0xFE) | 1]
}

/// Table id, section_length (the bytes after it) and the fixed header of a long-form section, then `body`, then the
/// CRC; `damage` flips one byte (the CRC then no longer sums to zero).
func section(tableID: UInt8, idField: UInt16, body: [UInt8], damage: Int?) -> [UInt8] {
    let length = 5 + body.count + 4
    var s: [UInt8] = [tableID, 0xB0 | UInt8(length >> 8 & 0x0F), UInt8(length & 0xFF),
                      UInt8(idField >> 8), UInt8(idField & 0xFF), 0xC1, 0x00, 0x00]
    s += body
    let crc = CRC32MPEG2.checksum(s)
    s += [UInt8(crc >> 24), UInt8(crc >> 16 & 0xFF), UInt8(crc >> 8 & 0xFF), UInt8(crc & 0xFF)]
    if let damage { s[damage % s.count] ^= 0x5A }
    return s
}

/// PIDs the script draws from: a few that the tables name, so tables and streams meet.
func pid(_ input: inout FuzzInput) -> UInt16 {
    switch input.choice(10) {
    case 0, 1: return 0x100  // the PMT
    case 2, 3, 4: return 0x101  // video
    case 5: return 0x102  // audio
    case 6: return TSConstants.patPID
    case 7: return TSConstants.nullPID
    case 8: return 0x1000
    default: return input.uint16() & 0x1FFF
    }
}

let streamTypes: [UInt8] = [0x1B, 0x24, 0x02, 0x01, 0x0F, 0x03, 0x81, 0x06]

/// The script's next step of the clock: mostly one frame (25 fps), sometimes a reorder, a jump or a wrap.
func step(_ clock: inout UInt64, _ input: inout FuzzInput) {
    let modulus: UInt64 = 1 << 33
    switch input.choice(16) {
    case 0: clock = input.uint64() % modulus
    case 1: clock = (clock + modulus - UInt64(input.uint16())) % modulus
    case 2: break
    case 3: clock = (clock + TSChunker.maxFrameGap + UInt64(input.byte()) - 128) % modulus
    default: clock = (clock + 3600) % modulus
    }
}

/// A PES start: header with PTS/DTS (or not), then a start code the keyframe finder looks at, then filler.
func pesStart(_ builder: inout StreamBuilder, _ input: inout FuzzInput) {
    let pid = pid(&input)
    step(&builder.clock, &input)
    let flags = input.byte()
    var adaptation = StreamBuilder.Adaptation()
    adaptation.randomAccess = flags & 0x01 != 0
    adaptation.discontinuity = flags & 0x02 == 0x02 && input.choice(4) == 0
    if flags & 0x04 != 0 { adaptation.pcr = builder.clock * 300 + UInt64(input.choice(300)) }
    let streamIDs: [UInt8] = [0xE0, 0xE0, 0xC0, 0xBD, 0xBE, 0xBC, 0xF0, 0xFF]
    let streamID = streamIDs[Int(flags >> 5)]
    var header: [UInt8] = []
    let pts = (builder.clock + UInt64(input.choice(4)) * 3600) % (1 << 33)
    var ptsDts: UInt8 = 0
    switch input.choice(5) {
    case 0: break
    case 1:
        ptsDts = 2
        header = timestampBytes(pts, prefix: 2)
    case 2, 3:
        ptsDts = 3
        header = timestampBytes(pts, prefix: 3) + timestampBytes(builder.clock, prefix: 1)
    default:
        ptsDts = input.byte() >> 6  // any flags, any bytes
        header = (0..<input.choice(12)).map { _ in input.byte() }
    }
    header += [UInt8](repeating: 0xFF, count: input.choice(4))  // header stuffing
    let headerLength = input.choice(16) == 0 ? input.byte() : UInt8(header.count)
    let marker: UInt8 = input.choice(16) == 0 ? input.byte() : 0x80
    var payload: [UInt8] = [0, 0, 1, streamID, 0, 0, marker, ptsDts << 6, headerLength] + header
    let codes: [UInt8] = [0x65, 0x67, 0x41, 0x09, 0xB3, 0x00, 0x40, 0x26, 0x02]
    payload += [0, 0, 0, 1, codes[input.choice(codes.count)]]
    payload += input.bytes(limit: 160)
    builder.append(pid: pid, unitStart: true, adaptation: adaptation, payload: payload)
}

/// Turns a script into a stream (at most `maxPackets` packets and some garbage).
func buildStream(_ input: inout FuzzInput, maxPackets: Int) -> [UInt8] {
    var b = StreamBuilder()
    var pmtPID: UInt16 = 0x100
    while !input.isAtEnd && b.packetCount < maxPackets {
        switch input.choice(12) {
        case 0:  // PAT
            var body: [UInt8] = []
            for _ in 0...input.choice(3) {
                let program: UInt16 = input.choice(4) == 0 ? 0 : 1 + UInt16(input.choice(4))
                if input.choice(4) == 0 { pmtPID = pid(&input) }
                body += [UInt8(program >> 8), UInt8(program & 0xFF), 0xE0 | UInt8(pmtPID >> 8), UInt8(pmtPID & 0xFF)]
            }
            let damage = input.choice(8) == 0 ? input.choice(256) : nil
            let fill = (0..<(input.choice(8) == 0 ? input.choice(8) : 0)).map { _ in input.byte() }
            b.appendSection(section(tableID: input.choice(16) == 0 ? input.byte() : 0x00, idField: 1, body: body,
                                    damage: damage), pid: TSConstants.patPID, pointerFill: fill)
        case 1, 2:  // PMT
            var body: [UInt8] = []
            let pcrPID = input.choice(3) == 0 ? pid(&input) : 0x101
            let info = (0..<(input.choice(4) == 0 ? input.choice(40) : 0)).map { _ in input.byte() }
            body += [0xE0 | UInt8(pcrPID >> 8), UInt8(pcrPID & 0xFF), 0xF0 | UInt8(info.count >> 8), UInt8(info.count)]
            body += info
            for _ in 0...input.choice(4) {
                let type = input.choice(8) == 0 ? input.byte() : streamTypes[input.choice(streamTypes.count)]
                let esPID = pid(&input)
                // Now and then descriptors long enough to carry the section over several packets.
                let es = input.choice(6) == 0 ? Int(input.uint16()) % 250 : 0
                body += [type, 0xE0 | UInt8(esPID >> 8), UInt8(esPID & 0xFF), 0xF0 | UInt8(es >> 8 & 0x0F),
                         UInt8(es & 0xFF)]
                body += [UInt8](repeating: input.byte(), count: es)
            }
            let damage = input.choice(8) == 0 ? input.choice(512) : nil
            b.appendSection(section(tableID: input.choice(16) == 0 ? input.byte() : 0x02, idField: 1, body: body,
                                    damage: damage), pid: pmtPID, pointerFill: [])
        case 3, 4, 5:
            pesStart(&b, &input)
        case 6:  // continuation
            b.append(pid: pid(&input), unitStart: false, payload: input.bytes(limit: 184))
        case 7:  // a packet of raw bytes after a sync byte (often not one that parses)
            var raw = [TSPacket.syncByte] + input.bytes(limit: 187)
            raw += [UInt8](repeating: input.byte(), count: 188 - raw.count)
            b.bytes += raw
            b.packetCount += 1
        case 8:  // garbage between packets: sync is lost
            b.bytes += input.bytes(limit: 200)
        case 9:  // a truncated packet
            let whole = StreamBuilder.packet(pid: pid(&input), unitStart: input.choice(2) == 0, counter: 0,
                                             payload: input.bytes(limit: 184))
            b.bytes += whole.prefix(input.choice(188))
        case 10:  // PCR only, or a damaged or scrambled payload
            var adaptation = StreamBuilder.Adaptation()
            step(&b.clock, &input)
            adaptation.pcr = b.clock * 300 + UInt64(input.choice(300))
            adaptation.discontinuity = input.choice(8) == 0
            let flags = input.byte()
            b.append(pid: pid(&input), unitStart: flags & 1 != 0, adaptation: adaptation,
                     payload: flags & 2 != 0 ? input.bytes(limit: 100) : [], transportError: flags & 4 != 0,
                     scrambling: flags >> 6)
        default:
            b.append(pid: TSConstants.nullPID, unitStart: false, payload: [UInt8](repeating: 0xFF, count: 184))
        }
    }
    return b.bytes
}

// MARK: - The reference reading and the checks

/// The chunker's documented packet rule, read plainly: where it reads packets and how many bytes it skips.
func referencePackets(_ s: [UInt8]) -> (packets: [Range<Int>], skipped: Int) {
    var packets: [Range<Int>] = []
    var skipped = 0
    var synced = false
    var i = 0
    while s.count - i >= TSPacket.size {
        if !synced {
            if s[i] != TSPacket.syncByte {
                skipped += 1
                i += 1
                continue
            }
            if s.count - i < 2 * TSPacket.size { break }
            if s[i + TSPacket.size] != TSPacket.syncByte {
                skipped += 1
                i += 1
                continue
            }
            synced = true
        }
        let parses = s[i..<(i + TSPacket.size)].withUnsafeBytes { (try? TSPacket($0)) != nil }
        if parses {
            packets.append(i..<(i + TSPacket.size))
            i += TSPacket.size
        } else {
            synced = false
            skipped += 1
            i += 1
        }
    }
    return (packets, skipped)
}

/// What one chunker made of the stream.
struct Run {
    var chunks: [MediaChunk] = []
    var packets = 0, skipped = 0, chunkCount = 0, keyframes = 0
    var program: ProgramMap?
    var check: String = ""
}

/// Feeds `stream` in pieces of the sizes `sizes` yields (until the stream is used up), then finishes.
func run(_ stream: [UInt8], sizes: (Int) -> Int) -> Run {
    var chunker = TSChunker()
    var r = Run()
    var offset = 0
    var k = 0
    while offset < stream.count {
        let n = min(sizes(k), stream.count - offset)
        r.chunks += chunker.feed(stream[offset..<(offset + n)])
        offset += n
        k += 1
    }
    do { try chunker.check() } catch { r.check = "\(error)" }
    r.program = chunker.program
    if let last = chunker.finish() { r.chunks.append(last) }
    r.packets = chunker.packets
    r.skipped = chunker.skippedBytes
    r.chunkCount = chunker.chunks
    r.keyframes = chunker.keyframes
    return r
}

func same(_ a: Run, _ b: Run, _ how: String) {
    invariant(a.chunks.count == b.chunks.count, "\(how): \(a.chunks.count) chunks, whole: \(b.chunks.count)")
    for (i, (x, y)) in zip(a.chunks, b.chunks).enumerated() {
        invariant(x.bytes == y.bytes && x.time == y.time && x.keyframe == y.keyframe
                  && x.discontinuity == y.discontinuity && x.programHeader == y.programHeader,
                  "\(how): chunk \(i) differs from the whole feed's")
    }
    invariant(a.packets == b.packets && a.skipped == b.skipped && a.chunkCount == b.chunkCount
              && a.keyframes == b.keyframes, "\(how): counters differ from the whole feed's")
    invariant(a.program == b.program, "\(how): the program differs from the whole feed's")
    invariant(a.check == b.check, "\(how): check() says \(a.check.debugDescription), whole: \(b.check)")
}

/// Every 188th byte from the start is a sync byte.
func wholePackets(_ bytes: [UInt8]) -> Bool {
    bytes.count % TSPacket.size == 0 && stride(from: 0, to: bytes.count, by: TSPacket.size)
        .allSatisfy { bytes[$0] == TSPacket.syncByte }
}

/// The parsers below the chunker, on every packet's payload directly (no CRC gate in front of PSI).
func checkParsers(_ stream: [UInt8], _ packets: [Range<Int>]) {
    var assembler = SectionAssembler()
    for range in packets {
        stream[range].withUnsafeBytes { raw in
            guard let packet = try? TSPacket(raw) else {
                invariant(false, "a packet of the reference reading does not parse")
                return
            }
            invariant(packet.payloadOffset >= 4 && packet.payloadOffset <= TSPacket.size, "payload offset")
            // A 33-bit base at 300 ticks each and a 9-bit extension.
            invariant(packet.pcr.map { $0 <= ((1 << 33) - 1) * 300 + 511 } ?? true, "PCR beyond its 42 bits")
            let payload = UnsafeRawBufferPointer(rebasing: raw[packet.payloadOffset...])
            let (pts, dts) = PESHeader.timestamps(payload)
            invariant((pts ?? 0) < 1 << 33 && (dts ?? 0) < 1 << 33, "a PES timestamp beyond 33 bits")
            if let offset = PESHeader.dataOffset(payload) {
                invariant(offset >= 9 && offset <= payload.count, "PES data offset \(offset) of \(payload.count)")
                for kind in [TSConstants.StreamKind.h264, .hevc, .mpeg2Video, .aac] {
                    _ = RandomAccess.startsAccessPoint(UnsafeRawBufferPointer(rebasing: payload[offset...]),
                                                       kind: kind)
                }
            }
            // Any payload as a section, and the sections the assembler joins (whatever the PID).
            let bytes = Array(payload)
            _ = PSI.pmtPID(fromPAT: bytes)
            _ = PSI.programMap(fromPMT: bytes)
            for s in assembler.feed(payload, unitStart: packet.payloadUnitStart) {
                let length = Int(s[1] & 0x0F) << 8 | Int(s[2])
                invariant(s.count == length + 3 && s.count <= SectionAssembler.maxSectionBytes,
                          "a section of \(s.count) bytes, section_length \(length)")
                invariant(CRC32MPEG2.checksum(s) == 0, "a section with a bad CRC was returned")
                _ = PSI.pmtPID(fromPAT: s)
                if let map = PSI.programMap(fromPMT: s) {
                    invariant(map.streams.count <= (s.count - 16) / 5 + 1, "more streams than the section holds")
                }
            }
        }
    }
}

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzz(_ data: UnsafePointer<UInt8>, _ size: Int) -> Int32 {
    var input = FuzzInput(data, size)
    let mode = input.byte()
    let cutting = input.byte()
    let stream: [UInt8]
    if mode % 4 == 0 {
        var raw: [UInt8] = []
        while !input.isAtEnd { raw.append(input.byte()) }
        stream = raw
    } else {
        stream = buildStream(&input, maxPackets: 32)  // about 6 KB: three feeds of it stay fast
    }

    let whole = run(stream) { _ in stream.count }
    let palette = [1, 187, 188, 189, 376, 7, 2, 190]
    // The cutting byte picks how: sizes around a packet's, sizes read from the stream, a progression, or one byte
    // at a time (a quarter of the runs: byte by byte costs the most).
    let pieces = run(stream) { k in
        switch cutting % 4 {
        case 0: return palette[(k + Int(cutting)) % palette.count]
        case 1: return 1 + Int(stream[(k * 31 + Int(cutting)) % stream.count]) % (Int(cutting) + 1)
        case 2: return 1 + (k * Int(cutting) + 17) % 400
        default: return 1
        }
    }
    same(pieces, whole, "fed in pieces (cutting \(cutting))")

    let reference = referencePackets(stream)
    invariant(whole.packets == reference.packets.count,
              "\(whole.packets) packets read, the rule reads \(reference.packets.count)")
    invariant(whole.skipped == reference.skipped, "\(whole.skipped) bytes skipped, the rule skips \(reference.skipped)")
    let emitted = whole.chunks.flatMap(\.bytes)
    let packets = reference.packets.flatMap { stream[$0] }
    invariant(emitted == (whole.chunks.isEmpty ? [] : packets),
              "chunk bytes (\(emitted.count)) are not the \(reference.packets.count) packets read, in order")
    invariant(whole.chunkCount == whole.chunks.count, "\(whole.chunkCount) counted, \(whole.chunks.count) returned")
    invariant(whole.keyframes == whole.chunks.filter(\.keyframe).count, "keyframes miscounted")
    var previous: UInt64?
    for (i, chunk) in whole.chunks.enumerated() {
        invariant(!chunk.bytes.isEmpty && wholePackets(chunk.bytes), "chunk \(i) is not whole packets")
        invariant(wholePackets(chunk.programHeader) && chunk.programHeader.count <= 2 * TSPacket.size,
                  "chunk \(i)'s program header is not the PAT and PMT packets")
        invariant(chunk.keyframe || chunk.programHeader.isEmpty, "chunk \(i) has a program header but no keyframe")
        if let previous {
            let gap = chunk.time > previous ? chunk.time - previous : previous - chunk.time
            invariant(gap <= TSChunker.maxFrameGap, "chunk \(i)'s time jumps by \(gap) ticks (no discontinuity cap)")
        }
        previous = chunk.time
    }
    checkParsers(stream, reference.packets)
    return 0
}
