import MediaRelay
import Testing

private let ms: UInt64 = 1_000_000

/// A chunk of `size` bytes at frame `frame` of a 25 fps stream (3,600 ticks a frame), a keyframe every `gop`.
private func chunk(_ frame: Int, gop: Int = 25, size: Int = 1880, discontinuity: Bool = false) -> MediaChunk {
    MediaChunk(bytes: [UInt8](repeating: UInt8(frame & 0xFF), count: size), time: UInt64(frame) * 3600,
               keyframe: frame % gop == 0, discontinuity: discontinuity,
               programHeader: frame % gop == 0 ? [0x47, 0, 0, UInt8(frame & 0xFF)] : [])
}

private func sent(_ actions: [ChunkRing<Int>.Action], to viewer: Int) -> [[UInt8]] {
    actions.flatMap { action -> [[UInt8]] in
        if case .send(let v, let batch) = action, v == viewer { return batch.flatMap(\.pieces) }
        return []
    }
}

private func closed(_ actions: [ChunkRing<Int>.Action]) -> [Int] {
    actions.compactMap { if case .close(let v) = $0 { return v } else { return nil } }
}

@Suite("Playback pacing and the shared ring (mock clock)")
struct PlaybackTests {
    @Test("25 fps chunks are due 40 ms apart, whatever the time they are asked for")
    func pacing() {
        var pacer = PlaybackPacer()
        let start: UInt64 = 5_000 * ms
        var dues: [UInt64] = []
        for frame in 0..<50 {
            // The reader asks early (it reads ahead): the answer is the stream's own time.
            dues.append(pacer.due(chunk(frame), now: start + UInt64(frame) * 10 * ms))
        }
        #expect(dues.first == start)
        #expect(zip(dues.dropFirst(), dues).allSatisfy { $0 - $1 == 40 * ms })
        #expect(dues.last! - dues.first! == 49 * 40 * ms)
    }

    @Test("a clock jump re-anchors one frame after the previous chunk; a stalled reader goes on from now")
    func reanchoring() {
        var pacer = PlaybackPacer(maxLate: .seconds(1))
        _ = pacer.due(chunk(0), now: 0)
        let d1 = pacer.due(chunk(1), now: 0)
        var jumped = chunk(1000, discontinuity: true)
        jumped.keyframe = true
        let d2 = pacer.due(jumped, now: 0)
        #expect(d1 == 40 * ms)
        #expect(d2 == 80 * ms)
        #expect(pacer.due(chunk(1001), now: 0) == 120 * ms)
        // The reader stalls for 5 s: the next chunk is due now, not 5 s of chunks at once.
        let late = pacer.due(chunk(1002), now: 5_000 * ms)
        #expect(late == 5_000 * ms)
        #expect(pacer.due(chunk(1003), now: 5_000 * ms) == 5_040 * ms)
        #expect(pacer.reanchors == 2)
    }

    @Test("a viewer that drains gets every chunk once, in order, starting with the program header")
    func drainingViewer() {
        var ring = ChunkRing<Int>()
        var got: [[UInt8]] = sent(ring.addViewer(1, now: 0), to: 1)
        for frame in 0..<100 {
            let now = UInt64(frame) * 40 * ms
            got += sent(ring.append(chunk(frame), now: now), to: 1)
            got += sent(ring.drained(1, now: now + ms), to: 1)
        }
        #expect(got.first == [0x47, 0, 0, 0])
        #expect(got.dropFirst().map { $0[0] } == (0..<100).map { UInt8($0) })
        #expect(ring.statistics.drops == 0)
    }

    @Test("viewers at the same place get one shared batch; one elsewhere gets its own, from its keyframe")
    func sharedBatches() {
        var ring = ChunkRing<Int>()
        func batches(_ actions: [ChunkRing<Int>.Action]) -> [Int: [ChunkRing<Int>.Delivery]] {
            var out: [Int: [ChunkRing<Int>.Delivery]] = [:]
            for case .send(let viewer, let batch) in actions { out[viewer] = batch }
            return out
        }
        func storage(_ batch: [ChunkRing<Int>.Delivery]?) -> UnsafeRawPointer? {
            batch?.withUnsafeBufferPointer { UnsafeRawPointer($0.baseAddress) }
        }
        _ = ring.addViewer(1, now: 0)
        _ = ring.addViewer(2, now: 0)
        for frame in 0..<30 { ring.store(chunk(frame)) }
        let first = batches(ring.serveAll(now: 0))
        #expect(first[1]?.map(\.sequence) == Array(0..<30))
        #expect(first[2]?.map(\.sequence) == Array(0..<30))
        #expect(first[1]?.map(\.withProgramHeader) == [true] + Array(repeating: false, count: 29))
        #expect(storage(first[1]) != nil && storage(first[1]) == storage(first[2]))
        // Viewer 3 joins at the newest keyframe (frame 25): a batch of its own, with the header.
        _ = ring.drained(1, now: 0)
        _ = ring.drained(2, now: 0)
        let joined = batches(ring.addViewer(3, now: 0))[3]
        #expect(joined?.map(\.sequence) == Array(25..<30))
        #expect(joined?.first?.withProgramHeader == true)
        #expect(storage(joined) != storage(first[1]))
        for frame in 30..<40 { ring.store(chunk(frame)) }
        let next = batches(ring.serveAll(now: 0))
        #expect(next[1]?.map(\.sequence) == Array(30..<40))
        #expect(next[1]?.first?.withProgramHeader == false)
        #expect(storage(next[1]) == storage(next[2]))
        #expect(next[3] == nil)  // still writing its first batch
        // Once it drains it is where the others are, and gets their batch.
        let caughtUp = batches(ring.drained(3, now: 0))[3]
        #expect(caughtUp?.map(\.sequence) == Array(30..<40))
        #expect(storage(caughtUp) == storage(next[1]))
    }

    @Test("a viewer that never drains: the others get every chunk, it skips to keyframes, then it is closed")
    func stuckViewer() {
        var ring = ChunkRing<Int>(configuration: .init(capacityBytes: 100 * 1880, maxLag: .seconds(2),
                                                       stuckTimeout: .seconds(10)))
        _ = ring.addViewer(1, now: 0)
        _ = ring.addViewer(2, now: 0)
        var fast: [UInt8] = []
        var closedAt: UInt64?
        for frame in 0..<400 {
            let now = UInt64(frame) * 40 * ms
            let actions = ring.append(chunk(frame), now: now)
            fast += sent(actions, to: 1).filter { $0.count == 1880 }.map { $0[0] }
            fast += sent(ring.drained(1, now: now), to: 1).filter { $0.count == 1880 }.map { $0[0] }
            if closed(actions).contains(2) { closedAt = now }
            #expect(ring.bytes <= 100 * 1880)
        }
        #expect(fast == (0..<400).map { UInt8($0 & 0xFF) })
        #expect(ring.statistics.drops >= 1)
        #expect(closedAt.map { $0 > 10_000 * ms && $0 <= 10_040 * ms } == true)
        #expect(ring.viewerCount == 1)
    }

    @Test("a viewer that falls behind and drains later goes on from the newest keyframe, with its header")
    func skipToKeyframe() {
        var ring = ChunkRing<Int>(configuration: .init(maxLag: .seconds(2)))
        _ = ring.addViewer(1, now: 0)
        for frame in 0..<200 { _ = ring.append(chunk(frame), now: UInt64(frame) * 40 * ms) }
        // It got frames 0..<1 and then stopped draining. Each time it fell more than 2 s (50 frames) behind it
        // skipped to the newest keyframe: 50 when frame 50 came, 100 at 100, 150 at 150; at 199 it is 49 behind.
        let batch = sent(ring.drained(1, now: 8_000 * ms), to: 1)
        #expect(batch.first == [0x47, 0, 0, 150])
        #expect(batch.dropFirst().map { $0[0] } == (150..<200).map { UInt8($0) })
        #expect(ring.statistics.drops == 3)
        #expect(ring.statistics.drops >= 1)
    }

    @Test("a late joiner starts at the newest keyframe; at the end every viewer gets the rest, then the end")
    func lateJoinerAndEnd() {
        var ring = ChunkRing<Int>()
        for frame in 0..<60 { _ = ring.append(chunk(frame), now: UInt64(frame) * 40 * ms) }
        let first = sent(ring.addViewer(7, now: 2_400 * ms), to: 7)
        #expect(first.first == [0x47, 0, 0, 50])
        #expect(first.dropFirst().map { $0[0] } == (50..<60).map { UInt8($0) })
        _ = ring.append(chunk(60), now: 2_440 * ms)  // 7 is still writing: nothing for it
        let end = ring.finish(now: 2_480 * ms)
        #expect(end.isEmpty)
        let rest = ring.drained(7, now: 2_500 * ms)
        #expect(sent(rest, to: 7).map { $0[0] } == [60])
        let last = ring.drained(7, now: 2_520 * ms)
        #expect(last.count == 1)
        if case .end(let v)? = last.first { #expect(v == 7) } else { Issue.record("no end: \(last)") }
    }

    @Test("a late joiner starts at the newest keyframe already due, not at one handed over early")
    func lateJoinerStartsAtADueKeyframe() {
        var ring = ChunkRing<Int>()
        // Chunks 0...59 handed over a second before they are due (keyframes at 0, 25 and 50).
        for frame in 0..<60 {
            var early = chunk(frame)
            early.due = UInt64(frame) * 40 * ms + 1_000 * ms
            ring.store(early)
        }
        // At 2.2 s, frame 30 is due: keyframe 50 (due at 3 s) is not yet, keyframe 25 is.
        let first = sent(ring.addViewer(7, now: 2_200 * ms), to: 7)
        #expect(first.first == [0x47, 0, 0, 25], "\(first.map { $0[0] })")
        #expect(first.dropFirst().map { $0[0] } == (25..<60).map { UInt8($0) })
        // Nothing due yet at all: the oldest keyframe in the ring.
        var ahead = ChunkRing<Int>()
        for frame in 0..<30 {
            var early = chunk(frame)
            early.due = 5_000 * ms
            ahead.store(early)
        }
        #expect(sent(ahead.addViewer(8, now: 0), to: 8).dropFirst().first?[0] == 0)
    }
}
