import Reactor
import SwitchyardCore

/// The beats of a relay's viewers, in phases: a beat is a whole number of phases (``RelayConfiguration/writePhase``,
/// or the beat itself when it is shorter), the short one
/// (``RelayConfiguration/writeInterval``) and the large audience's (``RelayConfiguration/largeAudienceWriteInterval``),
/// each at most what was configured, so chunks handed over one configured beat early are never late.
struct BeatPlan: Sendable, Equatable {
    /// How long a phase lasts.
    let phaseNanoseconds: UInt64
    /// Phases of the short beat (0: no beat, every chunk is written when it arrives) and of the long one.
    let shortPhases: Int
    let longPhases: Int

    init(writeInterval: Duration, largeAudienceWriteInterval: Duration, phaseLength: Duration) {
        let long = max(writeInterval, largeAudienceWriteInterval)
        let phase = writeInterval > .zero ? min(phaseLength, writeInterval) : min(phaseLength, long)
        guard phase > .zero else {
            (phaseNanoseconds, shortPhases, longPhases) = (0, 0, 0)
            return
        }
        phaseNanoseconds = phase.nanosecondsSaturated
        shortPhases = writeInterval > .zero ? max(1, Int(writeInterval / phase)) : 0
        longPhases = long > .zero ? max(1, Int(long / phase)) : 0
    }

    /// How long before its due time a chunk goes to the rings on a beat of `phases`.
    func lead(_ phases: Int) -> UInt64 { UInt64(phases) * phaseNanoseconds }
}

/// The ring of one playback on one loop, with the viewers of that loop: the shell of `ChunkRing`. The playback posts
/// each due chunk to every loop that has viewers; on its loop the fanout appends it and writes it to the viewers that
/// have drained their sockets, each viewer once per write beat. The beat is cut into phases
/// (``RelayConfiguration/writePhase``) and every viewer has one (the least used when it joins), so the writes of a beat
/// are spread over it rather than leaving all at once: the viewers' side reads them as they come, and the sockets never
/// see a burst of the whole audience. The phases that have come are served when chunks arrive (a file's playback hands
/// them over once a phase; a pushed stream as they come), so the fanout wakes its loop no more often than its playback
/// does; a timer serves them when no chunk comes for two beats (appends move it on: while chunks come it never fires).
/// A viewer still writing is checked on the same occasions: once its connection's queue is empty it is handed the next
/// part of its batch (`ViewerOutput`), and once nothing of the batch is left it has drained. Loop-confined: every
/// method runs on `loop`.
final class LoopFanout: @unchecked Sendable {  // confined to `loop` (its methods assert it)
    let loop: EventLoop
    private var ring: ChunkRing<UInt64>
    private var sinks: [UInt64: any ViewerSink] = [:]
    private var writing: Set<UInt64> = []
    private var timer: TimerHandle?
    private let counters: RelayCounters
    private let viewerLeft: @Sendable () -> Void
    private var reported = ChunkRing<UInt64>.Statistics()

    /// The phases of the beats; the buckets of viewers (as many as the long beat has phases: a viewer in bucket q is
    /// served at the phases p with p = q modulo the beat); the beat now, in phases (0: on every append).
    private let plan: BeatPlan
    private var buckets: [[UInt64]]
    private var bucketOf: [UInt64: Int] = [:]
    private var beatPhases: Int
    /// The beat grew: every viewer is served at the next append, so none waits a long beat for the chunks its short
    /// one would have brought.
    private var serveAllNext = false
    /// The phase served next, and when it is due (0: the beat has not started).
    private var nextPhase = 0
    private var nextPhaseAt: UInt64 = 0

    init(loop: EventLoop, ring: ChunkRing<UInt64>.Configuration, plan: BeatPlan, beatPhases: Int,
         counters: RelayCounters, viewerLeft: @escaping @Sendable () -> Void) {
        self.loop = loop
        self.plan = plan
        self.beatPhases = beatPhases
        self.ring = ChunkRing(configuration: ring)
        self.counters = counters
        self.viewerLeft = viewerLeft
        buckets = Array(repeating: [], count: max(1, plan.longPhases))
    }

    var viewerCount: Int { sinks.count }

    /// Seeds a new fanout with the chunks since the playback's latest keyframe, so its first viewer starts at once.
    func seed(_ chunks: [MediaChunk]) {
        loop.assertInLoopThread()
        for chunk in chunks { ring.store(chunk) }
    }

    func add(_ id: UInt64, _ sink: any ViewerSink) {
        loop.assertInLoopThread()
        sinks[id] = sink
        let bucket = buckets.indices.min { buckets[$0].count < buckets[$1].count } ?? 0
        buckets[bucket].append(id)
        bucketOf[id] = bucket
        let now = sy_now()
        if timer == nil { armTick(now: now) }
        perform(ring.addViewer(id, now: now))
    }

    /// The viewer's connection closed.
    func remove(_ id: UInt64) {
        loop.assertInLoopThread()
        guard sinks.removeValue(forKey: id) != nil else { return }
        if let bucket = bucketOf.removeValue(forKey: id), let index = buckets[bucket].firstIndex(of: id) {
            buckets[bucket].remove(at: index)
        }
        writing.remove(id)
        ring.removeViewer(id)
        viewerLeft()
        stopTimerIfIdle()
    }

    /// Chunks now due (handed over a beat early). Stored for the beat; served at once when there is no beat, or
    /// when they are the playback's first, so a stream starts without waiting for the beat (the first hand-over
    /// holds a whole beat of chunks, so the viewers have them before the next beat).
    func append(_ chunks: [MediaChunk]) {
        loop.assertInLoopThread()
        let now = sy_now()
        pollDrained(now: now)
        counters.add(.chunksAppended, chunks.count)
        let first = ring.chunkCount == 0
        for chunk in chunks { ring.store(chunk) }
        if beatPhases == 0 || first || serveAllNext {
            serveAllNext = false
            perform(ring.serveAll(now: now))
        } else {
            servePhases(now: now)
        }
        countRingStatistics()
        if !sinks.isEmpty, tickDeadline < now &+ tickPeriod / 4 * 3 { armTick(now: now) }
    }

    func finish() {
        loop.assertInLoopThread()
        let now = sy_now()
        pollDrained(now: now)
        perform(ring.finish(now: now))
    }

    /// How long the fanout waits for a chunk before its timer does the work an append does: two beats (two phases
    /// when there is no beat). Longer than the chunks' own interval, so the timer never takes a phase just before its
    /// chunks come (they would wait for the next one).
    private var tickPeriod: UInt64 {
        let period = plan.lead(beatPhases > 0 ? beatPhases : 1)
        return 2 * (period > 0 ? period : max(plan.phaseNanoseconds, 1_000_000))
    }

    /// When the timer fires, unless an append moves it on first.
    private var tickDeadline: UInt64 = 0

    /// (Re)schedules the timer a ``tickPeriod`` from `now`. Appends move it on before it fires, so while the chunks
    /// come (every phase, or every chunk) it never wakes the loop.
    private func armTick(now: UInt64) {
        timer?.cancel()
        let period = tickPeriod
        tickDeadline = now &+ period
        timer = loop.schedule(after: .nanoseconds(Int64(clamping: period))) { [weak self] in
            self?.tick()
        }
    }

    /// The timer, for when no chunk comes for two beats: drains, the phases that have come, stuck viewers.
    private func tick() {
        let now = sy_now()
        timer = nil
        if !sinks.isEmpty { armTick(now: now) }
        pollDrained(now: now)
        servePhases(now: now)
        perform(ring.closeStuck(now: now))
        countRingStatistics()
        stopTimerIfIdle()
    }

    /// The playback's audience changed its beat (in phases; see ``BeatPlan``).
    func setBeat(phases: Int) {
        loop.assertInLoopThread()
        if phases > beatPhases { serveAllNext = true }
        beatPhases = phases
    }

    /// Serves the viewers whose phase has come (each phase at most once a call); a fanout more than a beat behind
    /// (no chunk and no timer for that long) goes on from now.
    private func servePhases(now: UInt64) {
        guard beatPhases > 0 else { return }
        if nextPhaseAt == 0 { nextPhaseAt = now }
        var actions: [ChunkRing<UInt64>.Action] = []
        var served = 0
        // Half a phase early is the phase's time: the playback hands its chunks over once a phase, and a phase that
        // comes just after an append would otherwise wait for the next one.
        let slack = plan.phaseNanoseconds / 2
        while now &+ slack >= nextPhaseAt, served < buckets.count {
            for bucket in buckets.indices where bucket % beatPhases == nextPhase % beatPhases {
                for id in buckets[bucket] { actions += ring.serve(id, now: now) }
            }
            nextPhase = (nextPhase + 1) % buckets.count
            nextPhaseAt &+= plan.phaseNanoseconds
            served += 1
        }
        if now >= nextPhaseAt { nextPhaseAt = now &+ plan.phaseNanoseconds }
        perform(actions)
    }

    private func stopTimerIfIdle() {
        if sinks.isEmpty, let timer {
            timer.cancel()
            self.timer = nil
        }
    }

    private func pollDrained(now: UInt64) {
        guard !writing.isEmpty else { return }
        for id in writing {
            guard let sink = sinks[id] else {
                writing.remove(id)
                continue
            }
            guard sink.connection.queuedOutputBytes == 0 else { continue }
            counters.add(.bytesSent, sink.output.flush())
            notePeak(sink)
            if sink.output.isDrained {
                writing.remove(id)
                perform(ring.drained(id, now: now))
            }
        }
    }

    /// Keeps the largest output queue any viewer had (bytes copied because its socket did not take them).
    private func notePeak(_ sink: any ViewerSink) {
        let peak = sink.connection.peakQueuedOutputBytes
        var seen = counters.peakViewerQueuedBytes.load(ordering: .relaxed)
        while peak > seen {
            let (exchanged, original) = counters.peakViewerQueuedBytes.compareExchange(
                expected: seen, desired: peak, ordering: .relaxed)
            if exchanged { break }
            seen = original
        }
    }

    private func perform(_ actions: [ChunkRing<UInt64>.Action]) {
        for action in actions {
            switch action {
            case .send(let id, let batch):
                guard let sink = sinks[id] else { continue }
                counters.add(.viewerWrites)
                counters.add(.bytesSent, sink.write(batch))
                notePeak(sink)
                if sink.output.isDrained && sink.connection.isActive {
                    perform(ring.drained(id, now: sy_now()))
                } else {
                    writing.insert(id)
                }
            case .end(let id):
                sinks[id]?.end()
            case .close(let id):
                writing.remove(id)
                sinks[id]?.connection.forceClose()
            }
        }
    }

    private func countRingStatistics() {
        let s = ring.statistics
        if s.drops != reported.drops { counters.add(.drops, s.drops - reported.drops) }
        if s.stuckClosed != reported.stuckClosed { counters.add(.stuckClosed, s.stuckClosed - reported.stuckClosed) }
        reported = s
    }
}
