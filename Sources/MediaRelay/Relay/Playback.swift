import DequeModule
import Logging
import Reactor
import SwitchyardCore
import Synchronization

/// Where one viewer's chunks go: an HTTP response body, or chunk frames. Loop thread of its connection only.
protocol ViewerSink: AnyObject, Sendable {
    /// The viewer's bytes not taken by its socket yet (references to the shared chunks), and its connection.
    var output: ViewerOutput { get }
    /// Hands the batch to the socket, straight from the shared chunks (what the socket does not take waits in
    /// `output`); returns the bytes handed to the connection.
    func write(_ batch: [ChunkRing<UInt64>.Delivery]) -> Int
    /// The stream ended and the viewer has had everything: end its stream and close after the flush.
    func end()
}

extension ViewerSink {
    var connection: TCPConnection { output.connection }
}

/// The counters every playback and fanout of a relay adds to.
final class RelayCounters: Sendable {
    let viewers = Atomic<Int>(0)
    let viewersServed = Atomic<Int>(0)
    let viewersRefused = Atomic<Int>(0)
    let playbacks = Atomic<Int>(0)
    let playbacksStarted = Atomic<Int>(0)
    let fileBytesRead = Atomic<Int>(0)
    let chunksAppended = Atomic<Int>(0)
    let bytesSent = Atomic<Int>(0)
    let drops = Atomic<Int>(0)
    let stuckClosed = Atomic<Int>(0)
    let badRequests = Atomic<Int>(0)
    let notFound = Atomic<Int>(0)
    let publishers = Atomic<Int>(0)
    let sharedBytesSent = Atomic<Int>(0)
    let sharedMemoryBytes = Atomic<Int>(0)
    let viewerWrites = Atomic<Int>(0)
    let largeAudiencePlaybacks = Atomic<Int>(0)
    /// The largest output queue of any viewer so far (a maximum, not a sum).
    let peakViewerQueuedBytes = Atomic<Int>(0)

    enum Name { case viewersServed, viewersRefused, playbacks, playbacksStarted, fileBytesRead, chunksAppended,
                     bytesSent, drops, stuckClosed, badRequests, notFound, publishers, sharedBytesSent,
                     sharedMemoryBytes, viewerWrites, largeAudiencePlaybacks }

    func add(_ name: Name, _ n: Int = 1) {
        switch name {
        case .viewersServed: viewersServed.wrappingAdd(n, ordering: .relaxed)
        case .viewersRefused: viewersRefused.wrappingAdd(n, ordering: .relaxed)
        case .playbacks: playbacks.wrappingAdd(n, ordering: .relaxed)
        case .playbacksStarted: playbacksStarted.wrappingAdd(n, ordering: .relaxed)
        case .fileBytesRead: fileBytesRead.wrappingAdd(n, ordering: .relaxed)
        case .chunksAppended: chunksAppended.wrappingAdd(n, ordering: .relaxed)
        case .bytesSent: bytesSent.wrappingAdd(n, ordering: .relaxed)
        case .drops: drops.wrappingAdd(n, ordering: .relaxed)
        case .stuckClosed: stuckClosed.wrappingAdd(n, ordering: .relaxed)
        case .badRequests: badRequests.wrappingAdd(n, ordering: .relaxed)
        case .notFound: notFound.wrappingAdd(n, ordering: .relaxed)
        case .publishers: publishers.wrappingAdd(n, ordering: .relaxed)
        case .sharedBytesSent: sharedBytesSent.wrappingAdd(n, ordering: .relaxed)
        case .sharedMemoryBytes: sharedMemoryBytes.wrappingAdd(n, ordering: .relaxed)
        case .viewerWrites: viewerWrites.wrappingAdd(n, ordering: .relaxed)
        case .largeAudiencePlaybacks: largeAudiencePlaybacks.wrappingAdd(n, ordering: .relaxed)
        }
    }
}

/// The monotonic clock of the relay (ns).
@inline(__always) func sy_now() -> UInt64 { SystemInfo.monotonicNanoseconds() }

/// Which stream a playback is.
struct PlaybackKey: Hashable, Sendable, CustomStringConvertible {
    enum Mode: Hashable, Sendable { case live, vod(viewer: UInt64) }
    var resource: String
    var room: String
    var mode: Mode

    var description: String {
        switch mode {
        case .live: return room.isEmpty ? "live \(resource)" : "live \(resource) room \(room)"
        case .vod(let viewer): return "vod \(resource) for viewer \(viewer)"
        }
    }
}

/// One stream being relayed: its source (a file read once, at the stream's own pace, or chunks pushed by a
/// publisher) fanned out to a `LoopFanout` on every loop that has viewers. Its own state is confined to its home
/// `loop`; viewers join and leave from their connections' loops.
///
///     reader (its queue) --chunks--> read-ahead (home loop) --due, by the stream's clock--> fanouts (viewer loops)
final class Playback: @unchecked Sendable {  // confined to `loop`, except the immutable lets
    enum Source {
        case file(MediaFileReader)
        /// Chunks pushed by a publisher: the playback lives as long as its publisher.
        case push
        /// Chunks pulled from an origin relay: stopped like a file's playback when nobody watches; `close`
        /// disconnects from the origin.
        case origin(close: @Sendable () -> Void)
    }

    let key: PlaybackKey
    let loop: EventLoop
    private let source: Source
    private let configuration: RelayConfiguration
    private let counters: RelayCounters
    private let logger: Logger
    private let onFinished: @Sendable (Playback) -> Void
    private var pacer = PlaybackPacer()
    private var readAhead: Deque<MediaChunk> = []
    private var headDue: UInt64?
    private var reading = false
    private var readerAtEnd = false
    private var timer: TimerHandle?
    private var idleTimer: TimerHandle?
    private var fanouts: [ObjectIdentifier: LoopFanout] = [:]
    /// Chunks go to the rings this long before they are due (the fanouts' write beat).
    private var leadNanoseconds: UInt64
    /// The beats, and whether the audience is large now (a file's playback only: its chunks can go out early).
    private let plan: BeatPlan
    private var largeAudience = false
    /// Chunks since the keyframe before the latest (a new loop's fanout starts with them), and their bytes.
    private var sinceKeyframe: [MediaChunk] = []
    private var sinceKeyframeBytes = 0
    private var viewers = 0
    private var started = false
    private(set) var finished = false
    private let readAheadTicks: UInt64

    init(key: PlaybackKey, loop: EventLoop, source: Source, configuration: RelayConfiguration,
         counters: RelayCounters, logger: Logger, onFinished: @escaping @Sendable (Playback) -> Void) {
        self.key = key
        self.loop = loop
        self.source = source
        self.configuration = configuration
        self.counters = counters
        self.logger = logger
        self.onFinished = onFinished
        readAheadTicks = PlaybackPacer.ticks(configuration.readAhead)
        plan = BeatPlan(writeInterval: configuration.writeInterval,
                        largeAudienceWriteInterval: min(configuration.largeAudienceWriteInterval,
                                                        configuration.ring.maxLag / 2),
                        phaseLength: configuration.writePhase)
        leadNanoseconds = plan.lead(plan.shortPhases)
        counters.add(.playbacks)
        counters.add(.playbacksStarted)
    }

    /// Adds a viewer whose connection is on `sink.connection.loop`; `id` names it in its fanout. Any thread. When
    /// the playback has already finished the viewer's stream is ended at once.
    func addViewer(_ id: UInt64, _ sink: any ViewerSink) {
        loop.executeInLoop { [self] in
            let viewerLoop = sink.connection.loop
            guard !finished else {
                viewerLoop.executeInLoop { sink.end() }
                return
            }
            viewers += 1
            defer { audienceChanged() }
            idleTimer?.cancel()
            idleTimer = nil
            let fanout = fanout(for: viewerLoop)
            viewerLoop.executeInLoop { fanout.add(id, sink) }
            if !started {
                started = true
                if case .file = source { requestRead() }
            }
        }
    }

    /// The beat of this playback's viewers now, in phases.
    private var beatPhases: Int { largeAudience ? plan.longPhases : plan.shortPhases }

    /// A file's playback with ``RelayConfiguration/largeAudience`` viewers or more goes to the long beat (its chunks
    /// are handed over that much earlier at once, and every fanout serves everyone once with them); below half of it,
    /// back to the short one. Home loop.
    private func audienceChanged() {
        guard case .file = source, !finished, plan.longPhases > plan.shortPhases else { return }
        let threshold = largeAudience ? max(1, configuration.largeAudience / 2) : configuration.largeAudience
        let large = viewers >= threshold
        guard large != largeAudience else { return }
        largeAudience = large
        counters.add(.largeAudiencePlaybacks, large ? 1 : -1)
        let phases = beatPhases
        leadNanoseconds = plan.lead(phases)
        for fanout in fanouts.values { fanout.loop.executeInLoop { fanout.setBeat(phases: phases) } }
        if large, started, let pending = timer {
            pending.cancel()
            emitDue()
        }
    }

    /// The fanout of `viewerLoop` for viewers of this playback (made, and seeded, on first use). Home loop only.
    private func fanout(for viewerLoop: EventLoop) -> LoopFanout {
        if let existing = fanouts[ObjectIdentifier(viewerLoop)] { return existing }
        let made = LoopFanout(loop: viewerLoop, ring: configuration.ring, plan: plan, beatPhases: beatPhases,
                              counters: counters,
                              viewerLeft: { [weak self] in self?.viewerLeft() })
        fanouts[ObjectIdentifier(viewerLoop)] = made
        let seed = sinceKeyframe
        if !seed.isEmpty { viewerLoop.executeInLoop { made.seed(seed) } }
        return made
    }

    /// The fanout on `viewerLoop` (for the viewer's close). Home loop only; nil when none was made.
    private func viewerLeft() {
        loop.executeInLoop { [self] in
            viewers -= 1
            audienceChanged()
            guard viewers == 0, !finished else { return }
            switch key.mode {
            case .vod:
                stop(reason: "its viewer left")
            case .live:
                if case .push = source { return }  // a published stream lives as long as its publisher
                let grace = configuration.idleLivePlayback
                idleTimer = loop.schedule(after: grace) { [weak self] in
                    guard let self, self.viewers == 0, !self.finished else { return }
                    self.stop(reason: "nobody watched it for \(grace)")
                }
            }
        }
    }

    /// Removes a viewer (its connection closed). On the viewer's loop.
    func removeViewer(_ id: UInt64, on viewerLoop: EventLoop) {
        loop.executeInLoop { [self] in
            guard let fanout = fanouts[ObjectIdentifier(viewerLoop)] else { return }
            viewerLoop.executeInLoop { fanout.remove(id) }
        }
    }

    // MARK: A file, read ahead and paced

    private func requestRead() {
        guard case .file(let reader) = source, !reading, !readerAtEnd, !finished else { return }
        if let first = readAhead.first, let last = readAhead.last, last.time &- first.time >= readAheadTicks {
            return
        }
        reading = true
        reader.readNext { [weak self] piece in
            guard let self else { return }
            self.loop.execute { self.received(piece, from: reader) }
        }
    }

    private func received(_ piece: MediaFileReader.Piece, from reader: MediaFileReader) {
        reading = false
        guard !finished else { return }
        counters.add(.fileBytesRead, reader.bytesRead - fileBytesCounted)
        fileBytesCounted = reader.bytesRead
        if let failure = piece.failure {
            logger.info("relay: a playback stopped: its file is not a stream the relay can pace", metadata: [
                "playback": "\(key)", "media.path": "\(reader.path)", "error.description": "\(failure)",
            ])
            stop(reason: failure)
            return
        }
        readAhead.append(contentsOf: piece.chunks)
        readerAtEnd = piece.atEnd
        // A pending wake covers the new chunks (they come after the head it waits for); none pending: the read-ahead
        // ran dry, and what is due goes now.
        if timer == nil { emitDue() }
        requestRead()
    }

    private var fileBytesCounted = 0

    /// Sends every chunk that is due, then sleeps until the next one is. On a beat the playback wakes once a phase
    /// (``BeatPlan/phaseNanoseconds``) and hands over every chunk come due since, not once a chunk: the fanouts write
    /// their viewers on the phases anyway, and a loop woken 25 times a second costs more than the chunks do. A chunk
    /// is handed over at most a phase after its time, so still at least `lead` minus a phase before it is due (a beat
    /// of one phase: on time). With no beat, each chunk is handed over at its own time, 25 times a second.
    private func emitDue() {
        timer = nil
        let now = sy_now()
        let phase = leadNanoseconds > 0 ? plan.phaseNanoseconds : 0
        // Every chunk due now goes to the fanouts in one task per loop (at the start, a whole beat of them).
        var handed: [MediaChunk] = []
        while let head = readAhead.first {
            let due = headDue ?? pacer.due(head, now: now)
            headDue = due
            // Handed over one write beat early (the fanouts write on that beat); within a millisecond is now.
            let handOver = due &- min(due, leadNanoseconds)
            if handOver > now &+ 1_000_000 {
                fanOut(handed)
                // The next phase, or the head's time when that is later (a gap in the stream).
                let wake = handed.isEmpty ? handOver : max(handOver, now &+ phase)
                timer = loop.schedule(after: .nanoseconds(Int64(wake - now))) { [weak self] in self?.emitDue() }
                requestRead()
                return
            }
            readAhead.removeFirst()
            headDue = nil
            var chunk = head
            chunk.due = due
            handed.append(chunk)
        }
        fanOut(handed)
        if readerAtEnd {
            stop(reason: nil)
        } else {
            requestRead()
        }
    }

    // MARK: Pushed chunks (a publisher, an origin)

    /// A chunk of a pushed stream: sent now (its publisher paces it). Any thread.
    func push(_ chunks: [MediaChunk]) {
        loop.executeInLoop { [self] in
            guard !finished else { return }
            fanOut(chunks)
        }
    }

    /// The pushed stream ended (its publisher left). Any thread.
    func endPush(reason: String?) {
        loop.executeInLoop { [self] in stop(reason: reason) }
    }

    // MARK: Fan-out and the end

    private enum SharedFileState {
        case unused
        case open(BroadcastFile)
        case failed
    }

    /// The shared memory file the chunks are copied into once (HTTP viewers are sent them with sendfile).
    private var sharedFileState = SharedFileState.unused

    /// The playback's shared memory file, made on first use; nil when the relay does not use one or it failed.
    private func sharedFile() -> BroadcastFile? {
        switch sharedFileState {
        case .open(let file): return file
        case .failed: return nil
        case .unused:
            guard configuration.sendFile else {
                sharedFileState = .failed
                return nil
            }
            let counters = self.counters
            do {
                let file = try BroadcastFile(name: "switchyard-relay") { delta in
                    counters.add(.sharedMemoryBytes, Int(delta))
                }
                sharedFileState = .open(file)
                return file
            } catch {
                logger.info("relay: no shared memory file for a playback; its viewers are written from memory",
                            metadata: ["playback": "\(key)", "error.description": "\(error)"])
                sharedFileState = .failed
                return nil
            }
        }
    }

    /// Hands chunks now due to every fanout, in one task per loop; copies each into the shared memory file first.
    private func fanOut(_ due: [MediaChunk]) {
        guard !due.isEmpty else { return }
        var chunks = due
        for i in chunks.indices {
            // A chunk that is a range of its media file is sent from the file; the others are copied into the
            // shared memory file once. Without sendfile, from the arrays.
            if !configuration.sendFile { chunks[i].sourceFile = nil }
            if chunks[i].sourceFile == nil, let file = sharedFile() {
                do {
                    chunks[i].shared = try chunks[i].bytes.withUnsafeBytes { bytes in try file.append(bytes) }
                } catch {
                    // The viewers are sent this chunk from its array; the file is not used again.
                    logger.info("relay: a playback's shared memory file is full; its viewers are written from memory",
                                metadata: ["playback": "\(key)", "error.description": "\(error)"])
                    sharedFileState = .failed
                }
            }
            // From the keyframe before the latest on: the latest may not be due yet (handed over early), and a new
            // loop's first viewer starts at one that is. Within the ring's bound.
            if chunks[i].keyframe, let latest = sinceKeyframe.lastIndex(where: { $0.keyframe }) {
                for dropped in sinceKeyframe[..<latest] { sinceKeyframeBytes -= dropped.bytes.count }
                sinceKeyframe.removeFirst(latest)
            }
            if chunks[i].keyframe || !sinceKeyframe.isEmpty {
                sinceKeyframe.append(chunks[i])
                sinceKeyframeBytes += chunks[i].bytes.count
                while sinceKeyframeBytes > configuration.ring.capacityBytes, sinceKeyframe.count > 1 {
                    sinceKeyframeBytes -= sinceKeyframe.removeFirst().bytes.count
                }
            }
        }
        let batch = chunks
        for fanout in fanouts.values {
            fanout.loop.executeInLoop { fanout.append(batch) }
        }
    }

    /// Ends the playback: every viewer gets what it has not had, then the end of its stream. Home loop.
    func stop(reason: String?) {
        loop.assertInLoopThread()
        guard !finished else { return }
        finished = true
        timer?.cancel()
        idleTimer?.cancel()
        if largeAudience { counters.add(.largeAudiencePlaybacks, -1) }
        switch source {
        case .file(let reader): reader.close()
        case .origin(let close): close()
        case .push: break
        }
        for fanout in fanouts.values { fanout.loop.executeInLoop { fanout.finish() } }
        readAhead.removeAll()
        sinceKeyframe = []
        sinceKeyframeBytes = 0
        sharedFileState = .failed  // closes once the viewers' rings let go of its regions
        counters.add(.playbacks, -1)
        logger.debug("relay: playback ended", metadata: ["playback": "\(key)", "reason": "\(reason ?? "end of file")"])
        onFinished(self)
    }
}
