import Logging
import Storage
import Synchronization
import Testing
import TestSupport

/// A write closure's side: the batches it got, and an optional gate that holds every write until opened.
final class RecordingSink: Sendable {
    private struct State {
        var batches: [[Int]] = []
        var attempts = 0
        var failuresLeft = 0
        var gateOpen = true
        var gateWaiters: [CheckedContinuation<Void, Never>] = []
    }

    private let state: Mutex<State>

    /// `failing`: the first this many writes throw. `gated`: writes wait for `open()`.
    init(failing: Int = 0, gated: Bool = false) {
        state = Mutex(State(failuresLeft: failing, gateOpen: !gated))
    }

    struct Failure: Error {}

    var batches: [[Int]] { state.withLock { $0.batches } }
    var written: [Int] { batches.flatMap { $0 } }
    var attempts: Int { state.withLock { $0.attempts } }

    func close() { state.withLock { $0.gateOpen = false } }

    func open() {
        let waiters = state.withLock { s -> [CheckedContinuation<Void, Never>] in
            s.gateOpen = true
            defer { s.gateWaiters = [] }
            return s.gateWaiters
        }
        for waiter in waiters { waiter.resume() }
    }

    /// The write closure.
    @Sendable func write(_ batch: [Int]) async throws {
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            let open = state.withLock { s -> Bool in
                s.attempts += 1
                if !s.gateOpen { s.gateWaiters.append(continuation) }
                return s.gateOpen
            }
            if open { continuation.resume() }
        }
        let fail = state.withLock { s -> Bool in
            if s.failuresLeft > 0 {
                s.failuresLeft -= 1
                return true
            }
            s.batches.append(batch)
            return false
        }
        if fail { throw Failure() }
    }
}

/// How long a test waits for the writer: long, because under the full suite the cooperative pool is shared with
/// tests that block its threads (seen: 13 s without a turn). `eventually` and `withTimeout` scale it by
/// `testTimeScale` themselves; a bound a test checks on the clock uses `scaledPatience` (the same, scaled).
private let patience: Duration = .seconds(60)
/// `patience` as long as the waits made with it may last (5 times longer under the sanitizers).
private let scaledPatience: Duration = patience * testTimeScale

private func balanced(_ s: BatchWriterStatistics) -> Bool {
    s.received == s.written + s.dropped + s.failed + s.queued
}

/// Runs `writer.run()` in a child task while `body` runs, then (`flushing`) waits until what `body` appended is
/// written, finishes the writer and waits for `run()` (at most 120 s: a writer that does not stop fails the test
/// instead of hanging it). Without `flushing` the writer's drain after `finish()` does the writing.
private func running<T: Sendable>(_ writer: BatchWriter<Int>, flushing: Bool = true,
                                  _ body: () async throws -> T) async throws -> T {
    try await withThrowingTaskGroup(of: Void.self) { group in
        group.addTask { try await withTimeout(120, "writer.run()") { await writer.run() } }
        let value = try await body()
        if flushing { try await withTimeout(120, "writer.flush()") { await writer.flush() } }
        writer.finish()
        try await group.waitForAll()
        return value
    }
}

@Suite("BatchWriter")
struct BatchWriterTests {
    let logger: Logger = {
        var logger = Logger(label: "batch-writer-tests")
        logger.logLevel = .warning
        return logger
    }()

    @Test("a full batch is written at once; a partial one after the flush interval; order is kept")
    func batchesAndInterval() async throws {
        let sink = RecordingSink()
        let writer = BatchWriter<Int>(
            configuration: BatchWriterConfiguration(batchSize: 3, flushInterval: .seconds(3600)),
            label: "test", logger: logger, write: sink.write)
        try await running(writer) {
            for i in 0..<7 { writer.append(i) }
            // Within the hour-long interval: only full batches are written.
            #expect(await eventually(timeout: patience) { sink.written.count == 6 })
            #expect(sink.batches == [[0, 1, 2], [3, 4, 5]])
            #expect(await eventually(timeout: patience) { writer.statistics.queued == 1 }, "the counters follow the write")
        }
        #expect(sink.batches == [[0, 1, 2], [3, 4, 5], [6]], "the partial batch, at the end")
        let stats = writer.statistics
        #expect(stats.received == 7 && stats.written == 7 && stats.queued == 0 && balanced(stats))

        let timed = RecordingSink()
        let interval = BatchWriter<Int>(
            configuration: BatchWriterConfiguration(batchSize: 3, flushInterval: .milliseconds(300)),
            label: "test", logger: logger, write: timed.write)
        try await running(interval) {
            let start = ContinuousClock.now
            interval.append(1)
            #expect(await eventually(timeout: patience) { timed.written == [1] })
            #expect(ContinuousClock.now - start >= .milliseconds(300), "collected for the interval first")
        }
    }

    @Test("the reporter's old drop-oldest queue: 1...7 into 5 keeps 3...7 in order, counts 2 drops, then takes more")
    func dropOldestQueue() async throws {
        let sink = RecordingSink()
        let writer = BatchWriter<Int>(
            configuration: BatchWriterConfiguration(capacity: 5, batchSize: 100, flushInterval: .seconds(3600)),
            label: "test", logger: logger, write: sink.write)
        for i in 1...7 { writer.append(i) }
        #expect(writer.statistics.queued == 5)
        #expect(writer.statistics.dropped == 2)
        try await running(writer) {
            await writer.flush()
            #expect(sink.written == [3, 4, 5, 6, 7])
            writer.append(8)
            await writer.flush()
            #expect(sink.written.last == 8)
            #expect(writer.statistics.queued == 0)
        }
    }

    @Test("full: the oldest waiting are dropped and counted; the batch being written counts against the capacity")
    func dropsOldest() async throws {
        let sink = RecordingSink(gated: true)
        let writer = BatchWriter<Int>(
            configuration: BatchWriterConfiguration(capacity: 5, batchSize: 1, flushInterval: .milliseconds(10)),
            label: "test", logger: logger, write: sink.write)
        try await running(writer) {
            writer.append(0)
            #expect(await eventually(timeout: patience) { sink.attempts == 1 }, "element 0 is in the writer's hands")
            var dropped = 0
            for i in 1...10 { dropped += writer.append(i) }
            let during = writer.statistics
            #expect(during.queued == 5 && during.dropped == 6 && dropped == 6, "\(during)")
            #expect(balanced(during))
            sink.open()
            #expect(await eventually(timeout: patience) { writer.statistics.queued == 0 })
        }
        #expect(sink.written == [0, 7, 8, 9, 10], "the newest survive")
        let stats = writer.statistics
        #expect(stats.written == 5 && stats.dropped == 6 && balanced(stats))
    }

    @Test("every held element being written: a new one that does not fit is the one dropped")
    func dropsNewWhenAllInFlight() async throws {
        let sink = RecordingSink(gated: true)
        let writer = BatchWriter<Int>(
            configuration: BatchWriterConfiguration(capacity: 2, batchSize: 2, flushInterval: .seconds(3600)),
            label: "test", logger: logger, write: sink.write)
        try await running(writer) {
            writer.append(0)
            writer.append(1)  // a full batch: written at once
            #expect(await eventually(timeout: patience) { sink.attempts == 1 })
            #expect(writer.append(2) == 1, "nothing waiting to drop: the new one goes")
            let stats = writer.statistics
            #expect(stats.dropped == 1 && stats.queued == 2 && balanced(stats), "\(stats)")
            sink.open()
        }
        #expect(sink.written == [0, 1])
    }

    @Test("a cost bound: the oldest make room; one element above the bound is dropped at once")
    func costBound() async throws {
        let sink = RecordingSink(gated: true)
        let writer = BatchWriter<Int>(
            configuration: BatchWriterConfiguration(capacity: 100, maxCost: 10, batchSize: 1,
                                                    flushInterval: .milliseconds(10)),
            label: "test", logger: logger, cost: { $0 }, write: sink.write)
        try await running(writer) {
            writer.append(1)
            #expect(await eventually(timeout: patience) { sink.attempts == 1 })
            #expect(writer.append(11) == 1, "costs more than the bound on its own")
            writer.append(4)
            writer.append(4)  // held: 1 + 4 + 4 = 9
            #expect(writer.statistics.queuedCost == 9)
            #expect(writer.append(3) == 1, "the oldest waiting (4) makes room: 1 + 4 + 3 = 8")
            let stats = writer.statistics
            #expect(stats.queuedCost == 8 && stats.queued == 3 && stats.dropped == 2 && balanced(stats), "\(stats)")
            sink.open()
        }
        #expect(sink.written == [1, 4, 3])
    }

    @Test("a batch takes elements while its cost is below batchCost")
    func batchCost() async throws {
        let sink = RecordingSink()
        let writer = BatchWriter<Int>(
            configuration: BatchWriterConfiguration(batchSize: 100, batchCost: 5, flushInterval: .milliseconds(300)),
            label: "test", logger: logger, cost: { $0 }, write: sink.write)
        try await running(writer) {
            for value in [2, 2, 2, 9, 1, 1] { writer.append(value) }
            #expect(await eventually(timeout: patience) { sink.written.count == 6 })
        }
        // [2, 2] is below 5, so the third 2 joins (6); 9 alone passes it; then [1, 1].
        #expect(sink.batches == [[2, 2, 2], [9], [1, 1]])
    }

    @Test("a failing write: without retries the batch counts as failed; the next batch is written")
    func failureDrops() async throws {
        let sink = RecordingSink(failing: 1)
        let events = Shared<[String]>([])
        let writer = BatchWriter<Int>(
            configuration: BatchWriterConfiguration(batchSize: 2, flushInterval: .milliseconds(10)),
            label: "test", logger: logger,
            observe: { event, _ in
                switch event {
                case .written(let n): events.update { $0.append("written \(n)") }
                case .writeFailed(let n, _, let retry): events.update { $0.append("failed \(n) retry \(retry)") }
                case .dropped(let n): events.update { $0.append("dropped \(n)") }
                }
            },
            write: sink.write)
        try await running(writer) {
            writer.append(1)
            writer.append(2)
            #expect(await eventually(timeout: patience) { writer.statistics.failed == 2 })
            writer.append(3)
            writer.append(4)
            #expect(await eventually(timeout: patience) { writer.statistics.written == 2 })
        }
        #expect(sink.written == [3, 4])
        let stats = writer.statistics
        #expect(stats.failed == 2 && stats.failedWrites == 1 && stats.written == 2 && balanced(stats))
        #expect(events.get() == ["failed 2 retry false", "written 2"])
    }

    @Test("retries: a batch is tried again and written; when the attempts run out it fails")
    func retries() async throws {
        let sink = RecordingSink(failing: 2)
        let writer = BatchWriter<Int>(
            configuration: BatchWriterConfiguration(flushInterval: .zero, retries: 2, retryDelay: .milliseconds(10)),
            label: "test", logger: logger, write: sink.write)
        try await running(writer) {
            writer.append(1)
            #expect(await eventually(timeout: patience) { writer.statistics.written == 1 })
        }
        #expect(sink.written == [1] && sink.attempts == 3)
        #expect(writer.statistics.failedWrites == 2 && writer.statistics.failed == 0)

        let always = RecordingSink(failing: 100)
        let giving = BatchWriter<Int>(
            configuration: BatchWriterConfiguration(flushInterval: .zero, retries: 1, retryDelay: .milliseconds(10)),
            label: "test", logger: logger, write: always.write)
        try await running(giving) {
            giving.append(1)
            #expect(await eventually(timeout: patience) { giving.statistics.failed == 1 })
        }
        let stats = giving.statistics
        #expect(always.attempts == 2 && stats.failedWrites == 2 && stats.queued == 0 && balanced(stats))
    }

    @Test("finish() writes what is held at once and run() returns")
    func finishDrains() async throws {
        let sink = RecordingSink()
        let writer = BatchWriter<Int>(
            // A drain timeout far beyond the bound below: a writer starved of threads for a minute (the whole
            // suite under ASan on two cores) is measured by that bound, not cut short by the timeout.
            configuration: BatchWriterConfiguration(batchSize: 4, flushInterval: .seconds(3600),
                                                    drainTimeout: .seconds(3600)),
            label: "test", logger: logger, write: sink.write)
        let start = ContinuousClock.now
        try await running(writer, flushing: false) {
            for i in 0..<10 { writer.append(i) }
        }
        #expect(ContinuousClock.now - start < scaledPatience, "at once: not after the hour-long flush interval")
        #expect(sink.written == Array(0..<10))
        #expect(writer.statistics.queued == 0)
        // Appended before run(): finish() then run() writes it and returns.
        let early = RecordingSink()
        let later = BatchWriter<Int>(configuration: BatchWriterConfiguration(flushInterval: .seconds(3600),
                                                                             drainTimeout: .seconds(60)),
                                     label: "test", logger: logger, write: early.write)
        later.append(42)
        later.finish()
        await later.run()
        #expect(early.written == [42])
    }

    @Test("a write that hangs is abandoned at the drain timeout; it is counted if it returns later")
    func drainTimeout() async throws {
        let sink = RecordingSink(gated: true)
        let lines = Shared<[CapturedLog]>([])
        let writer = BatchWriter<Int>(
            configuration: BatchWriterConfiguration(batchSize: 1, flushInterval: .zero,
                                                    drainTimeout: .milliseconds(200)),
            label: "hanging", logger: CapturingLogHandler.logger(into: lines, level: .info), write: sink.write)
        let start = ContinuousClock.now
        try await running(writer, flushing: false) {
            writer.append(1)
            writer.append(2)
            #expect(await eventually(timeout: patience) { sink.attempts == 1 })
        }
        let took = ContinuousClock.now - start
        #expect(took < scaledPatience, "run() returned \(took) after finish although the write never did")
        var stats = writer.statistics
        #expect(stats.queued == 2 && stats.written == 0 && balanced(stats), "\(stats)")
        #expect(lines.get().filter { $0.message.contains("stopped before its queue was written") }.count == 1)
        sink.open()
        #expect(await eventually(timeout: patience) { writer.statistics.written == 1 })
        stats = writer.statistics
        #expect(stats.queued == 1 && balanced(stats), "the late write counts; element 2 was never taken: \(stats)")
    }

    @Test("cancelling run() stops it at once, a write in progress included")
    func cancellation() async throws {
        let sink = RecordingSink(gated: true)
        let writer = BatchWriter<Int>(configuration: BatchWriterConfiguration(flushInterval: .zero),
                                      label: "test", logger: logger, write: sink.write)
        let task = Task { await writer.run() }
        writer.append(1)
        #expect(await eventually(timeout: patience) { sink.attempts == 1 })
        task.cancel()
        try await withTimeout(60, "cancelled run()") { await task.value }
        #expect(writer.statistics.queued == 1)
        sink.open()
        #expect(await eventually(timeout: patience) { writer.statistics.written == 1 })

        // Cancelled while idle.
        let idle = BatchWriter<Int>(label: "test", logger: logger, write: sink.write)
        let idleTask = Task { await idle.run() }
        try await Task.sleep(for: .milliseconds(20))
        idleTask.cancel()
        try await withTimeout(60, "cancelled idle run()") { await idleTask.value }
    }

    @Test("flush() waits for what was appended before it and writes partial batches at once")
    func flushWaits() async throws {
        let sink = RecordingSink()
        let writer = BatchWriter<Int>(
            configuration: BatchWriterConfiguration(batchSize: 100, flushInterval: .seconds(3600)),
            label: "test", logger: logger, write: sink.write)
        try await running(writer) {
            await writer.flush()  // nothing appended: at once
            for i in 0..<5 { writer.append(i) }
            try await withTimeout(60, "flush()") { await writer.flush() }
            #expect(sink.written == [0, 1, 2, 3, 4])
        }
        // After run() has ended, flush() does not wait.
        writer.append(9)
        try await withTimeout(60, "flush() after run()") { await writer.flush() }
    }

    @Test("a flood with a slow sink: the writer never holds more than its capacity; the newest are kept")
    func floodIsBounded() async throws {
        let sink = RecordingSink()
        let writer = BatchWriter<Int>(
            configuration: BatchWriterConfiguration(capacity: 100, batchSize: 10, flushInterval: .milliseconds(1)),
            label: "flood", logger: logger,
            write: { batch in
                try await Task.sleep(for: .milliseconds(5))
                try await sink.write(batch)
            })
        try await running(writer) {
            for i in 0..<20_000 {
                writer.append(i)
                if i % 1000 == 0 { #expect(writer.statistics.queued <= 100) }
            }
            #expect(writer.statistics.queued <= 100)
        }
        let stats = writer.statistics
        #expect(stats.received == 20_000 && stats.dropped > 0 && stats.queued == 0 && balanced(stats), "\(stats)")
        #expect(sink.written.last == 19_999)
    }

    @Test("drops are logged once per episode: from the first drop until the writer has caught up")
    func dropEpisodes() async throws {
        let lines = Shared<[CapturedLog]>([])
        let sink = RecordingSink(gated: true)
        let writer = BatchWriter<Int>(
            configuration: BatchWriterConfiguration(capacity: 3, batchSize: 1, flushInterval: .zero),
            label: "episodes", logger: CapturingLogHandler.logger(into: lines, level: .info), write: sink.write)
        func episodes() -> [CapturedLog] { lines.get().filter { $0.message.contains("dropping the oldest") } }
        try await running(writer) {
            for i in 0..<50 { writer.append(i) }
            #expect(writer.statistics.dropped == 47)
            #expect(episodes().count == 1)
            #expect(episodes().first?.metadata["writer.label"] == "episodes")
            sink.open()
            #expect(await eventually(timeout: patience) { writer.statistics.queued == 0 })
            sink.close()
            let before = sink.attempts
            writer.append(100)
            #expect(await eventually(timeout: patience) { sink.attempts == before + 1 })
            for i in 101..<110 { writer.append(i) }
            #expect(episodes().count == 2, "a second episode")
            sink.open()
            #expect(await eventually(timeout: patience) { writer.statistics.queued == 0 })
        }
        #expect(writer.statistics.dropped == 47 + 7)
    }

    @Test("offer: a full writer refuses without dropping, tells the owner when there is room, never passes its bounds")
    func offerPushesBack() async throws {
        let sink = RecordingSink(gated: true)
        let writer = BatchWriter<Int>(
            configuration: BatchWriterConfiguration(capacity: 10, maxCost: 10, batchSize: 100, flushInterval: .zero),
            label: "test", logger: logger, cost: { $0 }, write: sink.write)
        let told = EventCounter()
        try await running(writer) {
            #expect(writer.offer(4) && writer.offer(4))
            #expect(await eventually(timeout: patience) { sink.attempts == 1 }, "[4] or [4, 4] is being written")
            #expect(!writer.offer(3), "8 + 3 passes the cost bound of 10")
            #expect(writer.hasRoom(forCost: 2) && !writer.hasRoom(forCost: 3))
            #expect(writer.notifyWhenRoom(forCost: 3) { told.signal() })
            #expect(told.count == 0, "no room yet")
            let atOnce = EventCounter()
            #expect(writer.notifyWhenRoom(forCost: 2) { atOnce.signal() })
            #expect(atOnce.count == 1, "room now: called at once")
            sink.open()
            #expect(await eventually(timeout: patience) { told.count == 1 })
            #expect(writer.offer(3))
        }
        let stats = writer.statistics
        #expect(sink.written == [4, 4, 3] && stats.dropped == 0 && stats.received == 3, "\(stats)")
        #expect(stats.peakQueuedCost == 8 && balanced(stats), "\(stats)")
        #expect(!writer.offer(1) && !writer.notifyWhenRoom(forCost: 1) {}, "a stopped writer takes nothing")
    }

    @Test("validate() names the setting out of range", arguments: [
        (BatchWriterConfiguration(capacity: 0), "capacity"),
        (BatchWriterConfiguration(maxCost: 0), "maxCost"),
        (BatchWriterConfiguration(batchSize: 0), "batchSize"),
        (BatchWriterConfiguration(batchCost: -1), "batchCost"),
        (BatchWriterConfiguration(flushInterval: .milliseconds(-1)), "flushInterval"),
        (BatchWriterConfiguration(retries: -1), "retries"),
        (BatchWriterConfiguration(drainTimeout: .seconds(-1)), "drainTimeout"),
    ])
    func validation(configuration: BatchWriterConfiguration, setting: String) {
        #expect(throws: BatchWriterError.self) { try configuration.validate() }
        do {
            try configuration.validate()
        } catch {
            #expect("\(error)".contains(setting))
        }
        #expect(throws: Never.self) { try BatchWriterConfiguration().validate() }
    }
}
