import Logging
import Synchronization

/// A bounded queue in front of a slow sink (a database), with the loop that empties it in batches.
///
///     appenders (any thread) --append--> [ waiting ... | being written ]  --write(batch)--> database
///                                          ^ full: the oldest waiting is dropped (`append`), or the new
///                                            one is refused and its owner told when there is room (`offer`)
///
/// `append` never waits: it takes a short lock, drops the oldest waiting elements when the writer holds
/// ``BatchWriterConfiguration/capacity`` elements (or ``BatchWriterConfiguration/maxCost``), and wakes the writer
/// when a batch is full. ``run()`` is the writer: it collects for ``BatchWriterConfiguration/flushInterval`` (or
/// until a batch is full), writes a batch of at most ``BatchWriterConfiguration/batchSize`` elements through
/// `write`, retries or drops a failed batch, and ends after ``finish()`` once everything held is written (at most
/// ``BatchWriterConfiguration/drainTimeout`` later) or when its task is cancelled. The owner runs it as a child
/// task of its own `run()`:
///
///     let writer = BatchWriter<Row>(label: "reporter", logger: logger) { rows in try await insert(rows) }
///     try await withThrowingTaskGroup(of: Void.self) { group in
///         group.addTask { await writer.run() }
///         ...                       // the service runs; its handlers call writer.append(row)
///         writer.finish()           // no more input: write what is held, then run() returns
///     }
///
/// No lock is held across an await. Each write runs in a task of its own that the writer awaits, so a write
/// that hangs past the drain timeout is abandoned rather than holding shutdown (its elements stay counted as
/// queued, and are counted as written or failed if it returns later).
///
/// Safe to call from any thread.
// The writer task (run, batches, retries, the drain deadline) is in BatchWriter+Writer.swift; members it shares
// with this file are internal rather than private.
public final class BatchWriter<Element: Sendable>: Sendable {
    /// The settings (brought into range: a capacity below 1 is 1, and so on; see
    /// ``BatchWriterConfiguration/validate()``).
    public let configuration: BatchWriterConfiguration

    let label: String
    let logger: Logger
    let cost: @Sendable (Element) -> Int
    let write: @Sendable ([Element]) async throws -> Void
    let observe: @Sendable (BatchWriterEvent, BatchWriterStatistics) -> Void
    let state = Mutex(State())

    struct Item: Sendable {
        var element: Element
        var cost: Int
        var sequence: UInt64
    }

    struct InFlight {
        var count: Int
        var cost: Int
        var firstSequence: UInt64
    }

    enum WriteOutcome: Sendable {
        case written
        case failed(any Error)
        case abandoned
    }

    struct PendingWrite {
        var id: UInt64
        var continuation: CheckedContinuation<WriteOutcome, Never>
        var task: Task<Void, Never>?
    }

    struct State {
        /// The waiting elements are `items[head...]` (the front is dropped by moving `head`).
        var items: [Item] = []
        var head = 0
        var waitingCost = 0
        var inFlight: InFlight?
        var nextSequence: UInt64 = 0
        var counters = BatchWriterStatistics()
        /// When the batch being collected is written even if it is not full.
        var collectUntil: ContinuousClock.Instant?
        /// Elements below this sequence number are written at once (a `flush()` waits for them).
        var flushTarget: UInt64 = 0
        var flushWaiters: [(target: UInt64, continuation: CheckedContinuation<Void, Never>)] = []
        var running = false
        var stopped = false
        var finishing = false
        var finishDeadline: ContinuousClock.Instant?
        var abandoned = false
        /// Inside an episode of drops (logged once, when it starts; it ends when the writer catches up).
        var dropping = false
        /// A wake-up that came while the writer was not waiting.
        var signaled = false
        var waiter: CheckedContinuation<Void, Never>?
        var finishWatcher: CheckedContinuation<Void, Never>?
        var pendingWrite: PendingWrite?
        var nextWriteID: UInt64 = 0
        /// Told once when room is made (a batch written or failed) or the writer stops (`notifyWhenRoom`).
        var roomWaiters: [@Sendable () -> Void] = []

        var waiting: Int { items.count - head }
        var queued: Int { waiting + (inFlight?.count ?? 0) }
        var queuedCost: Int { waitingCost + (inFlight?.cost ?? 0) }

        /// The sequence number of the oldest element not yet written, dropped or failed.
        var lowestOutstanding: UInt64 {
            if let inFlight { return inFlight.firstSequence }
            if head < items.count { return items[head].sequence }
            return nextSequence
        }

        var statistics: BatchWriterStatistics {
            var s = counters
            s.queued = queued
            s.queuedCost = queuedCost
            return s
        }

        /// True when an element of `cost` fits within the bounds now, without dropping anything.
        func fits(cost: Int, capacity: Int, maxCost: Int?) -> Bool {
            queued + 1 <= capacity && (maxCost.map { queuedCost + cost <= $0 } ?? true)
        }

        /// Adds an element that was checked to fit; returns the writer to wake, if any.
        mutating func insert(_ element: Element, cost: Int, wakeNow: (State) -> Bool)
            -> CheckedContinuation<Void, Never>?
        {
            counters.received += 1
            let wasEmpty = waiting == 0
            items.append(Item(element: element, cost: cost, sequence: nextSequence))
            nextSequence += 1
            waitingCost += cost
            counters.peakQueuedCost = max(counters.peakQueuedCost, queuedCost)
            guard wasEmpty || wakeNow(self) else { return nil }
            let wake = takeWaiter()
            if wake == nil { signaled = true }
            return wake
        }

        mutating func takeRoomWaiters() -> [@Sendable () -> Void] {
            defer { roomWaiters = [] }
            return roomWaiters
        }

        mutating func dropOldestWaiting() {
            waitingCost -= items[head].cost
            head += 1
            compact()
        }

        mutating func compact() {
            if head == items.count {
                items.removeAll(keepingCapacity: items.capacity <= 4096)
                head = 0
            } else if head >= 1024 && head * 2 >= items.count {
                items.removeFirst(head)
                head = 0
            }
        }

        /// The flush waiters whose elements are all done (removed from the list).
        mutating func satisfiedFlushWaiters() -> [CheckedContinuation<Void, Never>] {
            guard !flushWaiters.isEmpty else { return [] }
            let low = lowestOutstanding
            var done: [CheckedContinuation<Void, Never>] = []
            flushWaiters.removeAll { waiter in
                if waiter.target <= low || stopped || abandoned {
                    done.append(waiter.continuation)
                    return true
                }
                return false
            }
            return done
        }

        mutating func takeWaiter() -> CheckedContinuation<Void, Never>? {
            defer { waiter = nil }
            return waiter
        }
    }

    /// Creates a writer; nothing is written until ``run()`` runs.
    ///
    /// - Parameters:
    ///   - configuration: Bounds, batch size, timing.
    ///   - label: Names the writer in its log lines (`writer.label` metadata).
    ///   - logger: Where the writer logs the start of an episode of drops and a drain cut short (info).
    ///   - cost: What one element costs against ``BatchWriterConfiguration/maxCost`` and
    ///     ``BatchWriterConfiguration/batchCost`` (negative counts as 0). Called outside the lock.
    ///   - observe: Told of drops, writes and failures, with the counters after them (for metrics).
    ///   - write: Writes one batch, oldest first; throwing fails the batch. Called by one task at a time.
    public init(configuration: BatchWriterConfiguration = BatchWriterConfiguration(), label: String, logger: Logger,
                cost: @escaping @Sendable (Element) -> Int = { _ in 1 },
                observe: @escaping @Sendable (BatchWriterEvent, BatchWriterStatistics) -> Void = { _, _ in },
                write: @escaping @Sendable ([Element]) async throws -> Void) {
        self.configuration = configuration.clamped
        self.label = label
        self.logger = logger
        self.cost = cost
        self.observe = observe
        self.write = write
    }

    /// The counters.
    public var statistics: BatchWriterStatistics { state.withLock { $0.statistics } }

    // MARK: Appending

    /// Queues `element` for writing. Never waits: a short lock, no I/O. Returns how many elements were dropped to
    /// make room (the new one included when it could not be held). Any thread.
    @discardableResult
    public func append(_ element: Element) -> Int {
        let elementCost = max(0, cost(element))
        let capacity = configuration.capacity
        let maxCost = configuration.maxCost
        let interval = configuration.flushInterval
        let (dropped, firstDrop, wake, flushed, stats) = state.withLock { s in
            s.counters.received += 1
            let sequence = s.nextSequence
            s.nextSequence += 1
            let wasEmpty = s.waiting == 0
            var dropped = 0
            var fits = maxCost.map { elementCost <= $0 } ?? true
            if fits {
                while s.waiting > 0
                    && (s.queued + 1 > capacity || maxCost.map { s.queuedCost + elementCost > $0 } ?? false)
                {
                    s.dropOldestWaiting()
                    dropped += 1
                }
                fits = s.queued + 1 <= capacity && (maxCost.map { s.queuedCost + elementCost <= $0 } ?? true)
            }
            if fits {
                s.items.append(Item(element: element, cost: elementCost, sequence: sequence))
                s.waitingCost += elementCost
                s.counters.peakQueuedCost = max(s.counters.peakQueuedCost, s.queuedCost)
            } else {
                dropped += 1
            }
            s.counters.dropped += dropped
            let firstDrop = dropped > 0 && !s.dropping
            if dropped > 0 { s.dropping = true }
            // Wake the writer when it has something new to decide: a first element to collect, one to write at
            // once, a full batch. (Not waiting yet: `signaled` makes its next wait return at once.)
            var wake: CheckedContinuation<Void, Never>?
            if fits && (wasEmpty || interval == .zero || isBatchFull(s)) {
                wake = s.takeWaiter()
                if wake == nil { s.signaled = true }
            }
            let flushed = dropped > 0 ? s.satisfiedFlushWaiters() : []
            return (dropped, firstDrop, wake, flushed, dropped > 0 ? s.statistics : nil)
        }
        wake?.resume()
        for waiter in flushed { waiter.resume() }
        if firstDrop {
            logger.info("batch writer full: dropping the oldest until it catches up", metadata: [
                "writer.label": "\(label)", "writer.capacity": "\(capacity)",
                "writer.max_cost": "\(maxCost.map(String.init) ?? "none")",
            ])
        }
        if let stats { observe(.dropped(dropped), stats) }
        return dropped
    }

    /// Queues `element` only when it fits within ``BatchWriterConfiguration/capacity`` and
    /// ``BatchWriterConfiguration/maxCost`` now: nothing is dropped. Returns false (and counts nothing) when it does
    /// not fit or the writer has stopped; the caller keeps it and pushes back on its source, and
    /// ``notifyWhenRoom(forCost:_:)`` tells it when to try again. Never waits. Any thread.
    public func offer(_ element: Element) -> Bool {
        let elementCost = max(0, cost(element))
        let (capacity, maxCost, interval) = (configuration.capacity, configuration.maxCost, configuration.flushInterval)
        let (accepted, wake) = state.withLock { s -> (Bool, CheckedContinuation<Void, Never>?) in
            guard !s.stopped, !s.abandoned, s.fits(cost: elementCost, capacity: capacity, maxCost: maxCost) else {
                return (false, nil)
            }
            return (true, s.insert(element, cost: elementCost) { interval == .zero || isBatchFull($0) })
        }
        wake?.resume()
        return accepted
    }

    /// True when an element of `cost` would fit within the bounds now (nothing dropped). A check, not a
    /// reservation: the owner that needs it exact serializes its checks and appends (chat history does, under its
    /// lock). Any thread.
    public func hasRoom(forCost cost: Int) -> Bool {
        let (capacity, maxCost) = (configuration.capacity, configuration.maxCost)
        return state.withLock { s in !s.stopped && s.fits(cost: max(0, cost), capacity: capacity, maxCost: maxCost) }
    }

    /// Calls `body` once when an element of `cost` may fit: at once (on this thread) when it fits now, else after the
    /// next write returns (written or failed) or when the writer stops, from the writer's task. Returns false, and
    /// never calls `body`, when the writer has stopped already. The element may still not fit when `body` runs
    /// (another offer took the room): offer again and, if refused, ask again. Any thread.
    @discardableResult
    public func notifyWhenRoom(forCost cost: Int, _ body: @escaping @Sendable () -> Void) -> Bool {
        let (capacity, maxCost) = (configuration.capacity, configuration.maxCost)
        let now = state.withLock { s -> Bool? in
            if s.stopped || s.abandoned { return nil }
            if s.fits(cost: max(0, cost), capacity: capacity, maxCost: maxCost) { return true }
            s.roomWaiters.append(body)
            return false
        }
        guard let now else { return false }
        if now { body() }
        return true
    }

    func isBatchFull(_ s: State) -> Bool {
        if s.waiting >= configuration.batchSize { return true }
        if let batchCost = configuration.batchCost, s.waitingCost >= batchCost { return true }
        return false
    }

    // MARK: Finishing and flushing

    /// No more input is expected: ``run()`` writes what is held without waiting for full batches and returns when
    /// nothing is left, or ``BatchWriterConfiguration/drainTimeout`` after this call. Any thread; a second call does
    /// nothing.
    public func finish() {
        finish(deadline: ContinuousClock.now.advanced(by: configuration.drainTimeout))
    }

    /// ``finish()`` with the drain ending at `deadline` instead of ``BatchWriterConfiguration/drainTimeout`` from
    /// now (an owner that spent part of its shutdown budget already). Any thread; a second call does nothing.
    public func finish(deadline: ContinuousClock.Instant) {
        let (waiter, watcher) = state.withLock { s -> (CheckedContinuation<Void, Never>?, CheckedContinuation<Void, Never>?) in
            guard !s.finishing else { return (nil, nil) }
            s.finishing = true
            s.finishDeadline = deadline
            defer { s.finishWatcher = nil }
            return (s.takeWaiter(), s.finishWatcher)
        }
        waiter?.resume()
        watcher?.resume()
    }

    /// Waits until every element appended before this call is written, dropped or failed (partial batches are
    /// written at once meanwhile). Returns at once once ``run()`` has ended.
    public func flush() async {
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            let (ready, wake) = state.withLock { s -> (Bool, CheckedContinuation<Void, Never>?) in
                let target = s.nextSequence
                if s.lowestOutstanding >= target || s.stopped || s.abandoned { return (true, nil) }
                s.flushTarget = max(s.flushTarget, target)
                s.flushWaiters.append((target, continuation))
                let wake = s.takeWaiter()
                if wake == nil { s.signaled = true }
                return (false, wake)
            }
            if ready { continuation.resume() }
            wake?.resume()
        }
    }
}
