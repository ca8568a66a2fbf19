import DequeModule
import SwitchyardCore

/// The shared ring of one playback and the cursors of its viewers: the pure core of "one reader, many viewers".
/// The reader appends each chunk when it is due (`PlaybackPacer`); every viewer that has drained its socket gets
/// the chunks it has not had, as shared arrays (one copy in memory whatever the number of viewers: the shell
/// writes them with writev). A viewer whose socket does not drain is never waited for: once it is more than
/// `maxLag` of media behind, or its next chunk left the ring, it skips to the newest keyframe (a drop), and once
/// it has not drained for `stuckTimeout` it is closed. Memory: the ring holds at most `capacityBytes` (and always
/// the newest chunk); a viewer holds at most the one batch it is writing.
///
/// No I/O and no clock: the shell passes the time and performs the returned actions. Not thread-safe: the
/// playback's loop owns it.
public struct ChunkRing<Viewer: Hashable & Sendable> {
    public struct Configuration: Sendable {
        /// Bytes of chunks the ring keeps (the newest chunk is kept whatever its size).
        public var capacityBytes: Int
        /// How far behind the newest chunk, in media time, a viewer may fall before it skips to a keyframe.
        public var maxLag: Duration
        /// How long a viewer may leave a batch unwritten before it is closed.
        public var stuckTimeout: Duration

        public init(capacityBytes: Int = 8 << 20, maxLag: Duration = .seconds(2),
                    stuckTimeout: Duration = .seconds(15)) {
            self.capacityBytes = capacityBytes
            self.maxLag = maxLag
            self.stuckTimeout = stuckTimeout
        }
    }

    /// One chunk handed to a viewer.
    public struct Delivery: Sendable {
        /// The chunk's place in the playback (from 0; a gap: the viewer skipped chunks).
        public var sequence: UInt64
        public var chunk: MediaChunk
        /// The viewer starts here (it joined, or skipped to this keyframe): the program tables go before the chunk.
        public var withProgramHeader: Bool

        /// The byte arrays to write, in order: the program tables when they go first, then the chunk (shared
        /// arrays: no copy per viewer).
        public var pieces: [[UInt8]] {
            withProgramHeader && !chunk.programHeader.isEmpty ? [chunk.programHeader, chunk.bytes] : [chunk.bytes]
        }

        /// Bytes of `pieces`.
        public var byteCount: Int { (withProgramHeader ? chunk.programHeader.count : 0) + chunk.bytes.count }
    }

    /// What the shell does for a viewer.
    public enum Action: Sendable {
        /// Write these chunks, in order, then call `drained(_:now:)`.
        case send(Viewer, [Delivery])
        /// The stream ended and the viewer has had every chunk: end its stream (end-of-stream frame, end of body).
        case end(Viewer)
        /// The viewer is stuck past the timeout: close its connection.
        case close(Viewer)
    }

    /// Why a viewer was closed or skipped, for statistics.
    public struct Statistics: Sendable, Equatable {
        public var chunksAppended = 0
        public var chunksEvicted = 0
        /// Skips to a keyframe of viewers that fell behind.
        public var drops = 0
        /// Viewers closed for not draining.
        public var stuckClosed = 0
    }

    private struct Entry {
        let sequence: UInt64
        let chunk: MediaChunk
    }

    private struct ViewerState {
        /// Sequence number of the next chunk to send it.
        var next: UInt64
        /// A batch is being written; nothing more until it drains.
        var writing = false
        /// When the batch being written was handed out.
        var writingSince: UInt64 = 0
        /// It must start at a keyframe (a new viewer, or after a skip): chunks before the next keyframe are passed.
        var needsKeyframe = true
        var ended = false
    }

    public let configuration: Configuration
    private let maxLagTicks: UInt64
    private let stuckNanoseconds: UInt64
    private var entries: Deque<Entry> = []
    private var nextSequence: UInt64 = 0
    private var viewers: [Viewer: ViewerState] = [:]
    private var finished = false
    /// The last batch handed out, for the next viewer at the same place (dropped with every new chunk: a batch runs to
    /// the newest chunk, so it never outlives the chunks of the ring by more than one batch).
    private var lastBatch: LastBatch?

    private struct LastBatch {
        let from: UInt64
        let to: UInt64
        let withProgramHeader: Bool
        let deliveries: [Delivery]
    }

    /// Bytes of the chunks in the ring.
    public private(set) var bytes = 0
    public private(set) var statistics = Statistics()

    public init(configuration: Configuration = Configuration()) {
        self.configuration = configuration
        maxLagTicks = PlaybackPacer.ticks(configuration.maxLag)
        stuckNanoseconds = configuration.stuckTimeout.nanosecondsSaturated
    }

    public var viewerCount: Int { viewers.count }
    public var chunkCount: Int { entries.count }

    /// Adds a viewer; it starts at the newest keyframe in the ring that is due by `now` (a late joiner starts at a
    /// random access point, and its player's clock, which starts with its first frame, is not ahead of the chunks'
    /// due times: chunks handed over early would otherwise reach it late by as much), else at the oldest keyframe in
    /// the ring, else at the next keyframe to come.
    public mutating func addViewer(_ viewer: Viewer, now: UInt64) -> [Action] {
        let start = entries.last(where: { $0.chunk.keyframe && ($0.chunk.due ?? 0) <= now })?.sequence
            ?? entries.first(where: { $0.chunk.keyframe })?.sequence ?? nextSequence
        viewers[viewer] = ViewerState(next: start)
        if finished { return [.end(viewer)] }
        return serveOne(viewer, now: now)
    }

    /// Forgets a viewer (its connection closed).
    public mutating func removeViewer(_ viewer: Viewer) {
        viewers[viewer] = nil
    }

    /// The reader's next chunk, now due. Returns the batches for viewers that are ready, the skips and closes.
    public mutating func append(_ chunk: MediaChunk, now: UInt64) -> [Action] {
        store(chunk)
        return serveAll(now: now)
    }

    /// Adds the reader's next chunk without serving anyone: the shell serves the viewers on its own beat
    /// (`serveAll(now:)`), so each write carries several chunks.
    public mutating func store(_ chunk: MediaChunk) {
        precondition(!finished, "append after finish")
        entries.append(Entry(sequence: nextSequence, chunk: chunk))
        nextSequence += 1
        lastBatch = nil
        bytes += chunk.bytes.count
        statistics.chunksAppended += 1
        while bytes > configuration.capacityBytes, entries.count > 1 {
            bytes -= entries.removeFirst().chunk.bytes.count
            statistics.chunksEvicted += 1
        }
    }

    /// Serves every viewer that has drained: the chunks it has not had (also skips and closes).
    public mutating func serveAll(now: UInt64) -> [Action] {
        var actions: [Action] = []
        for viewer in Array(viewers.keys) {
            actions += serveOne(viewer, now: now)
        }
        return actions
    }

    /// Serves one viewer, if it has drained: the chunks it has not had (or its skip, its close). The shell that
    /// spreads its viewers over a beat serves each on its own phase of it.
    public mutating func serve(_ viewer: Viewer, now: UInt64) -> [Action] {
        serveOne(viewer, now: now)
    }

    /// The viewer's socket has written its batch.
    public mutating func drained(_ viewer: Viewer, now: UInt64) -> [Action] {
        guard viewers[viewer] != nil else { return [] }
        viewers[viewer]!.writing = false
        return serveOne(viewer, now: now)
    }

    /// The stream ended: every viewer gets what it has not had, then `.end`.
    public mutating func finish(now: UInt64) -> [Action] {
        finished = true
        var actions: [Action] = []
        for viewer in Array(viewers.keys) { actions += serveOne(viewer, now: now) }
        return actions
    }

    /// Closes viewers that have been writing one batch for longer than the stuck timeout (the shell calls this
    /// from a timer as well as on every append).
    public mutating func closeStuck(now: UInt64) -> [Action] {
        var actions: [Action] = []
        for (viewer, state) in viewers where state.writing && now &- state.writingSince > stuckNanoseconds {
            viewers[viewer] = nil
            statistics.stuckClosed += 1
            actions.append(.close(viewer))
        }
        return actions
    }

    private mutating func serveOne(_ viewer: Viewer, now: UInt64) -> [Action] {
        guard var state = viewers[viewer], !state.ended else { return [] }
        if state.writing {
            if now &- state.writingSince > stuckNanoseconds {
                viewers[viewer] = nil
                statistics.stuckClosed += 1
                return [.close(viewer)]
            }
            // Behind by more than the lag bound, or its next chunk is gone: skip to the newest keyframe.
            if let first = entries.first, let newest = entries.last, state.next <= newest.sequence {
                let behind = state.next < first.sequence
                    || newest.chunk.time &- entry(state.next).chunk.time > maxLagTicks
                if behind {
                    statistics.drops += 1
                    state.next = entries.last(where: { $0.chunk.keyframe && $0.sequence >= state.next })?.sequence
                        ?? nextSequence
                    state.needsKeyframe = true
                }
            }
            viewers[viewer] = state
            return []
        }
        if let first = entries.first, state.next < first.sequence {
            statistics.drops += 1
            state.next = entries.last(where: { $0.chunk.keyframe })?.sequence ?? nextSequence
            state.needsKeyframe = true
        }
        var from = state.next
        if state.needsKeyframe {
            while from < nextSequence, !entry(from).chunk.keyframe { from += 1 }
        }
        state.next = nextSequence
        if from < nextSequence {
            let batch = self.batch(from: from, withProgramHeader: state.needsKeyframe)
            state.needsKeyframe = false
            state.writing = true
            state.writingSince = now
            viewers[viewer] = state
            return [.send(viewer, batch)]
        }
        if finished {
            state.ended = true
            viewers[viewer] = state
            return [.end(viewer)]
        }
        viewers[viewer] = state
        return []
    }

    /// The chunks from `from` to the newest, as deliveries. Viewers that keep up are at the same place: the batch
    /// built for one is the next one's too (the same array, not a copy of every delivery per viewer).
    private mutating func batch(from: UInt64, withProgramHeader: Bool) -> [Delivery] {
        if let last = lastBatch, last.from == from, last.to == nextSequence,
           last.withProgramHeader == withProgramHeader {
            return last.deliveries
        }
        var deliveries: [Delivery] = []
        deliveries.reserveCapacity(Int(nextSequence - from))
        for sequence in from..<nextSequence {
            deliveries.append(Delivery(sequence: sequence, chunk: entry(sequence).chunk,
                                       withProgramHeader: withProgramHeader && sequence == from))
        }
        lastBatch = LastBatch(from: from, to: nextSequence, withProgramHeader: withProgramHeader,
                              deliveries: deliveries)
        return deliveries
    }

    private func entry(_ sequence: UInt64) -> Entry {
        entries[Int(sequence - entries.first!.sequence)]
    }
}

extension PlaybackPacer {
    /// A duration in 90 kHz ticks (negative: zero).
    static func ticks(_ duration: Duration) -> UInt64 {
        let (seconds, attoseconds) = duration.components
        guard seconds >= 0 else { return 0 }
        return UInt64(seconds) * ticksPerSecond + UInt64(attoseconds) / 11_111_111_111_111
    }
}
