import Foundation
import MediaRelay
import Testing

/// Builds one TS packet: an adaptation field when a flag, a PCR or stuffing needs one, then the payload.
private func packet(pid: UInt16, unitStart: Bool = false, counter: UInt8 = 0, pcr: UInt64? = nil,
                    randomAccess: Bool = false, payload: [UInt8] = []) -> [UInt8] {
    var header: [UInt8] = [0x47, (unitStart ? 0x40 : 0) | UInt8(pid >> 8), UInt8(pid & 0xFF)]
    var fields: [UInt8] = []
    if pcr != nil || randomAccess {
        fields = [randomAccess ? 0x40 : 0]
        if let pcr {
            fields[0] |= 0x10
            let base = pcr / 300, ext = pcr % 300
            fields += [UInt8(base >> 25 & 0xFF), UInt8(base >> 17 & 0xFF), UInt8(base >> 9 & 0xFF),
                       UInt8(base >> 1 & 0xFF), UInt8((base & 1) << 7) | 0x7E | UInt8(ext >> 8), UInt8(ext & 0xFF)]
        }
    }
    let data = Array(payload.prefix(183 - fields.count))
    if fields.isEmpty && data.count == 184 {
        header.append(0x10 | counter & 0x0F)
        return header + data
    }
    let fieldLength = 184 - 1 - data.count  // adaptation field bytes after its length byte
    header.append((data.isEmpty ? 0x20 : 0x30) | counter & 0x0F)  // no payload: the field fills the packet
    var field = fields
    field += [UInt8](repeating: 0xFF, count: fieldLength - fields.count)
    if fieldLength > 0 && fields.isEmpty { field[0] = 0 }  // a flags byte with no flags set, then stuffing
    return header + [UInt8(fieldLength)] + field + data
}

@Suite("Transport stream packets and chunks")
struct TSChunkerTests {
    @Test("a packet's PID, flags and PCR are read from its header and adaptation field")
    func packetHeader() throws {
        let bytes = packet(pid: 0x100, unitStart: true, counter: 7, pcr: 123_456_789 * 300 + 299, randomAccess: true)
        let parsed = try bytes.withUnsafeBytes { try TSPacket($0) }
        #expect(parsed.pid == 0x100)
        #expect(parsed.payloadUnitStart)
        #expect(parsed.continuityCounter == 7)
        #expect(parsed.randomAccess)
        // Unwrapped first: an optional UInt64 in #expect trips ASan in the testing library's AnyHashable copy.
        let pcr = try #require(parsed.pcr)
        #expect(pcr == 123_456_789 * 300 + 299)
    }

    @Test("short buffers, a missing sync byte and a reserved adaptation field control are refused")
    func badPackets() {
        var bytes = packet(pid: 0x20)
        #expect(throws: TSPacket.ParseError.short) { try bytes.dropLast().withUnsafeBytes { try TSPacket($0) } }
        bytes[0] = 0x48
        #expect(throws: TSPacket.ParseError.noSync) { try bytes.withUnsafeBytes { try TSPacket($0) } }
        bytes[0] = 0x47
        bytes[3] = 0x00
        #expect(throws: TSPacket.ParseError.badAdaptationField) { try bytes.withUnsafeBytes { try TSPacket($0) } }
        bytes[3] = 0x30
        bytes[4] = 183  // with a payload the field may not fill the packet
        #expect(throws: TSPacket.ParseError.badAdaptationField) { try bytes.withUnsafeBytes { try TSPacket($0) } }
    }

    @Test("an ffmpeg movie: 25 chunks a second, a keyframe every GOP, the program's codecs, its duration")
    func ffmpegMovie() throws {
        let movie = try TestMedia.movie(seconds: 4, fps: 25, gop: 25)
        defer { try? FileManager.default.removeItem(at: movie) }
        var chunker = TSChunker()
        var chunks = chunker.feed(try TestMedia.bytes(movie))
        if let last = chunker.finish() { chunks.append(last) }
        try chunker.check()
        let program = try #require(chunker.program)
        #expect(program.streams.map(\.kind.codecName) == ["h264", "mp2"])
        #expect(chunks.count == 100)
        #expect(chunks.filter(\.keyframe).count == 4)
        #expect(chunks[0].keyframe)
        #expect(!chunks[0].programHeader.isEmpty)
        let span = try #require(chunks.last).time - chunks[0].time
        #expect(span == 99 * 3600)  // 99 frame periods at 90 kHz / 25
        #expect(chunker.skippedBytes == 0)
        let total = chunks.reduce(0) { $0 + $1.bytes.count }
        let size = try TestMedia.bytes(movie).count
        #expect(total == size)
    }

    @Test("fed one byte at a time, in odd pieces, or at once: the same chunks")
    func dripFeed() throws {
        let movie = try TestMedia.movie(seconds: 2, fps: 25, gop: 10)
        defer { try? FileManager.default.removeItem(at: movie) }
        let bytes = try TestMedia.bytes(movie)
        func chunks(pieces: (Int) -> Int) -> [MediaChunk] {
            var chunker = TSChunker()
            var out: [MediaChunk] = []
            var i = 0
            var k = 0
            while i < bytes.count {
                let n = min(max(1, pieces(k)), bytes.count - i)
                out += chunker.feed(bytes[i..<i + n])
                i += n
                k += 1
            }
            if let last = chunker.finish() { out.append(last) }
            return out
        }
        let whole = chunks { _ in bytes.count }
        let bytewise = chunks { _ in 1 }
        let odd = chunks { [1, 187, 189, 7, 4096, 376][$0 % 6] }
        for other in [bytewise, odd] {
            #expect(other.count == whole.count)
            #expect(other.map(\.bytes) == whole.map(\.bytes))
            #expect(other.map(\.time) == whole.map(\.time))
            #expect(other.map(\.keyframe) == whole.map(\.keyframe))
            #expect(other.map(\.sourceOffset) == whole.map(\.sourceOffset))
        }
        #expect(whole.filter(\.keyframe).count == 5)
    }

    @Test("garbage between packets is skipped and counted; sync comes back at two sync bytes 188 apart")
    func resync() throws {
        let movie = try TestMedia.movie(seconds: 1, fps: 25, gop: 25)
        defer { try? FileManager.default.removeItem(at: movie) }
        let bytes = try TestMedia.bytes(movie)
        var clean = TSChunker()
        let expected = clean.feed(bytes).count
        var damaged = bytes
        let cut = 188 * 40
        damaged.insert(contentsOf: [0x47, 1, 2, 3, 0x47, 9, 9], at: cut)
        var chunker = TSChunker()
        let got = chunker.feed(damaged)
        #expect(chunker.skippedBytes == 7)
        #expect(got.count == expected)
        // Each chunk names its range of the bytes fed, except one the garbage fell inside: not one run of them.
        var cleanAgain = TSChunker()
        let insideOne = cleanAgain.feed(bytes).contains { chunk in
            let start = Int(chunk.sourceOffset ?? 0)
            return start < cut && cut < start + chunk.bytes.count
        }
        #expect(got.filter { $0.sourceOffset == nil }.count == (insideOne ? 1 : 0))
        for chunk in got {
            guard let offset = chunk.sourceOffset.map(Int.init) else { continue }
            #expect(Array(damaged[offset..<offset + chunk.bytes.count]) == chunk.bytes)
        }
    }

    @Test("every chunk of a clean file names its range of the file: the ranges tile it")
    func sourceRanges() throws {
        let movie = try TestMedia.movie(seconds: 2, fps: 25, gop: 25)
        defer { try? FileManager.default.removeItem(at: movie) }
        let bytes = try TestMedia.bytes(movie)
        var chunker = TSChunker()
        var chunks = chunker.feed(bytes)
        if let last = chunker.finish() { chunks.append(last) }
        var next = 0
        for chunk in chunks {
            #expect(chunk.sourceOffset == Int64(next))
            let end = next + chunk.bytes.count
            #expect(Array(bytes[next..<end]) == chunk.bytes)
            next = end
        }
        #expect(next == bytes.count)
    }

    @Test("a file that is not a transport stream, or has no clock, is refused with the reason")
    func refusals() throws {
        var text = TSChunker()
        _ = text.feed(Array(String(repeating: "not a movie ", count: 2000).utf8))
        #expect(throws: TSChunker.StreamError.notTransportStream) { try text.check() }

        // Packets of one PID and no tables: packets, but no program and no clock.
        var bare = TSChunker()
        _ = bare.feed((0..<50).flatMap { packet(pid: 0x100, counter: UInt8($0 & 15), payload: [1, 2, 3]) })
        #expect(bare.packets == 50)
        #expect(throws: TSChunker.StreamError.noClock("no program map table (PAT/PMT)")) { try bare.check() }
    }

    @Test("random bytes never crash the chunker and everything it returns is whole packets")
    func randomBytes() {
        var generator = SystemRandomNumberGenerator()
        for _ in 0..<200 {
            var chunker = TSChunker()
            let n = Int.random(in: 0..<5000, using: &generator)
            var bytes = (0..<n).map { _ in UInt8.random(in: 0...255, using: &generator) }
            // Plenty of sync bytes, so the packet paths run too.
            for i in stride(from: 0, to: bytes.count, by: 188) where Bool.random(using: &generator) { bytes[i] = 0x47 }
            var out = chunker.feed(bytes)
            if let last = chunker.finish() { out.append(last) }
            for chunk in out { #expect(chunk.bytes.count % 188 == 0) }
        }
    }
}
