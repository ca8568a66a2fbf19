import LarsWire
import Messaging
import SwitchyardCore
import Testing

/// Random frames, encoded by hand (not by FrameParser.encode) so the parser is checked against the spec's layout.
private func handEncoded(_ id: Int32, _ body: [UInt8]) -> [UInt8] {
    let u = UInt32(bitPattern: id)
    let n = UInt32(body.count)
    return [UInt8(u & 0xFF), UInt8((u >> 8) & 0xFF), UInt8((u >> 16) & 0xFF), UInt8(u >> 24),
            UInt8(n & 0xFF), UInt8((n >> 8) & 0xFF), UInt8((n >> 16) & 0xFF), UInt8(n >> 24)] + body
}

private func randomFrames(count: Int, maxBody: Int, rng: inout SplitMix64) -> [(Int32, [UInt8])] {
    (0..<count).map { _ in
        let id = Int32(truncatingIfNeeded: rng.next())
        let size = Int.random(in: 0...maxBody, using: &rng)
        return (id, (0..<size).map { _ in UInt8.random(in: 0...255, using: &rng) })
    }
}

@Suite("Frame parser (pure)")
struct FrameParserTests {
    @Test("the header is two little-endian Int32s, written byte by byte in the test")
    func headerLayout() throws {
        let bytes: [UInt8] = [0x04, 0x00, 0x00, 0x00, 0x03, 0x00, 0x00, 0x00, 0x0A, 0x0B, 0x0C]
        let outcome = bytes.withUnsafeBytes { FrameParser.parse($0, maxBodyLength: 100) }
        #expect(outcome == .frame(messageID: 4, bodyLength: 3))
        #expect(FrameParser.encode(messageID: 4, body: [0x0A, 0x0B, 0x0C]) == bytes)
        #expect(FrameParser.encode(messageID: -2, body: []) == [0xFE, 0xFF, 0xFF, 0xFF, 0, 0, 0, 0])
    }

    @Test("drip-fed one byte at a time: thousands of random frames come out whole and in order")
    func dripFeed() throws {
        var rng = SplitMix64(seed: 1)
        let frames = randomFrames(count: 2000, maxBody: 300, rng: &rng)
        let stream = frames.flatMap { handEncoded($0.0, $0.1) }
        var acc = FrameAccumulator(maxBodyLength: 1000)
        var got: [(Int32, [UInt8])] = []
        for byte in stream {
            acc.append(CollectionOfOne(byte))
            while let f = try acc.nextFrame() { got.append(f) }
        }
        #expect(got.count == frames.count)
        #expect(zip(got, frames).allSatisfy { $0.0 == $1.0 && $0.1 == $1.1 })
        #expect(acc.bufferedBytes == 0)
    }

    @Test("random splits, many frames per piece", arguments: [2, 3, 4, 5])
    func randomSplits(seed: UInt64) throws {
        var rng = SplitMix64(seed: seed)
        let frames = randomFrames(count: 3000, maxBody: 5000, rng: &rng)
        let stream = frames.flatMap { handEncoded($0.0, $0.1) }
        var acc = FrameAccumulator(maxBodyLength: 5000)
        var got: [(Int32, [UInt8])] = []
        var i = 0
        while i < stream.count {
            let n = min(stream.count - i, Int.random(in: 1...20_000, using: &rng))
            acc.append(stream[i..<i + n])
            i += n
            while let f = try acc.nextFrame() { got.append(f) }
        }
        #expect(got.count == frames.count)
        #expect(zip(got, frames).allSatisfy { $0.0 == $1.0 && $0.1 == $1.1 })
    }

    @Test("a truncated stream yields the whole frames and waits for the rest, without error")
    func truncated() throws {
        let whole = handEncoded(7, [1, 2, 3]) + handEncoded(8, Array(repeating: 9, count: 100))
        for cut in 0..<whole.count {
            var acc = FrameAccumulator()
            acc.append(whole[0..<cut])
            var got: [(Int32, [UInt8])] = []
            while let f = try acc.nextFrame() { got.append(f) }
            #expect(got.count == (cut >= 11 ? 1 : 0) + (cut == whole.count ? 1 : 0))
            #expect(acc.bufferedBytes == cut - (cut >= 11 ? 11 : 0))
        }
    }

    @Test("negative and oversize lengths are errors, the limit is exact")
    func badLengths() throws {
        let negative: [UInt8] = [1, 0, 0, 0, 0xFF, 0xFF, 0xFF, 0xFF]
        #expect(negative.withUnsafeBytes { FrameParser.parse($0, maxBodyLength: 10) } == .invalid(.negativeLength(-1)))
        var acc = FrameAccumulator(maxBodyLength: 10)
        acc.append(handEncoded(1, Array(repeating: 0, count: 11)))
        #expect(throws: FrameError.bodyTooLarge(length: 11, limit: 10)) { try acc.nextFrame() }
        // Exactly at the limit is fine, and the error is raised from the header alone (no need to buffer the body).
        var ok = FrameAccumulator(maxBodyLength: 10)
        ok.append(handEncoded(1, Array(repeating: 0, count: 10)))
        #expect(try ok.nextFrame()?.body.count == 10)
        let headerOnly: [UInt8] = [1, 0, 0, 0, 0, 0, 0x40, 0]  // 4 MiB body declared, limit 1 KiB
        #expect(headerOnly.withUnsafeBytes { FrameParser.parse($0, maxBodyLength: 1024) }
                == .invalid(.bodyTooLarge(length: 4 << 20, limit: 1024)))
    }

    @Test("a datagram must be exactly 8 + length bytes")
    func datagrams() throws {
        let good = handEncoded(4, [1, 2, 3])
        let parsed = good.withUnsafeBytes { raw -> (Int32, [UInt8])? in
            guard case .success(let f) = FrameParser.parseDatagram(raw) else { return nil }
            return (f.messageID, Array(f.body))
        }
        #expect(parsed?.0 == 4 && parsed?.1 == [1, 2, 3])
        for bad in [Array(good.dropLast()), good + [0], Array(good.prefix(7)), [],
                    [1, 0, 0, 0, 0xFF, 0xFF, 0xFF, 0xFF]] {
            let ok = bad.withUnsafeBytes { raw -> Bool in
                if case .success = FrameParser.parseDatagram(raw) { return true }
                return false
            }
            #expect(!ok, "datagram \(bad) should be rejected")
        }
    }

    @Test("property: encode then parse gives back id and body, for random frames")
    func roundTrip() throws {
        var rng = SplitMix64(seed: 42)
        for (id, body) in randomFrames(count: 500, maxBody: 2000, rng: &rng) {
            let bytes = FrameParser.encode(messageID: id, body: body)
            #expect(bytes == handEncoded(id, body))
            var acc = FrameAccumulator()
            acc.append(bytes)
            let f = try acc.nextFrame()
            #expect(f?.messageID == id && f?.body == body)
        }
    }
}
