import Logging
import Synchronization

extension BatchWriter {
    // MARK: The writer

    /// The writer loop; see ``BatchWriter``. Returns after ``finish()`` once everything held is written (or the
    /// drain timeout passed), or soon after its task is cancelled (what is held stays unwritten). Runs once; a
    /// second call returns at once.
    public func run() async {
        let first = state.withLock { s -> Bool in
            if s.running { return false }
            s.running = true
            return true
        }
        guard first else { return }
        await withTaskGroup(of: Void.self) { group in
            group.addTask { await self.watchDrainDeadline() }
            await writeUntilDone()
            group.cancelAll()
        }
        let (waiters, room) = state.withLock { s -> ([CheckedContinuation<Void, Never>], [@Sendable () -> Void]) in
            s.stopped = true
            defer { s.finishWatcher = nil }
            return (s.satisfiedFlushWaiters() + (s.finishWatcher.map { [$0] } ?? []), s.takeRoomWaiters())
        }
        for waiter in waiters { waiter.resume() }
        for body in room { body() }
    }

    enum Step {
        case stop
        case wait(until: ContinuousClock.Instant?)
        case write([Element])
    }

    func writeUntilDone() async {
        while true {
            if Task.isCancelled {
                abandon(because: "its task was cancelled")
                return
            }
            let step = state.withLock { nextStep(&$0, now: .now) }
            switch step {
            case .stop:
                return
            case .wait(let deadline):
                await waitForSignal(until: deadline)
            case .write(let batch):
                await writeBatch(batch)
            }
        }
    }

    /// Under the lock: what the writer does next.
    func nextStep(_ s: inout State, now: ContinuousClock.Instant) -> Step {
        if s.abandoned { return .stop }
        s.signaled = false
        if s.waiting == 0 {
            s.collectUntil = nil
            s.dropping = false
            return s.finishing ? .stop : .wait(until: nil)
        }
        let urgent = s.finishing || configuration.flushInterval == .zero || isBatchFull(s)
            || s.lowestOutstanding < s.flushTarget
        if !urgent {
            let until = s.collectUntil ?? now.advanced(by: configuration.flushInterval)
            s.collectUntil = until
            if now < until { return .wait(until: until) }
        }
        s.collectUntil = nil
        var batch: [Element] = []
        var batchCost = 0
        let first = s.items[s.head].sequence
        while s.head < s.items.count && batch.count < configuration.batchSize
            && (batch.isEmpty || configuration.batchCost.map { batchCost < $0 } ?? true)
        {
            let item = s.items[s.head]
            batch.append(item.element)
            batchCost += item.cost
            s.waitingCost -= item.cost
            s.head += 1
        }
        s.compact()
        s.inFlight = InFlight(count: batch.count, cost: batchCost, firstSequence: first)
        return .write(batch)
    }

    /// Writes one batch, with the retries the configuration allows, and counts the outcome.
    func writeBatch(_ batch: [Element]) async {
        var attempt = 0
        while true {
            let outcome = await attemptWrite(batch)
            switch outcome {
            case .abandoned:
                return  // the write's own task counts it when it returns
            case .written:
                let (stats, flushed, room) = state.withLock { s in
                    s.counters.written += batch.count
                    s.inFlight = nil
                    if s.waiting == 0 { s.dropping = false }  // caught up: an episode of drops ends
                    return (s.statistics, s.satisfiedFlushWaiters(), s.takeRoomWaiters())
                }
                for waiter in flushed { waiter.resume() }
                for body in room { body() }
                observe(.written(batch.count), stats)
                return
            case .failed(let error):
                let now = ContinuousClock.now
                let delay = configuration.retryDelay
                let (retry, stats, flushed, room) = state.withLock { s in
                    s.counters.failedWrites += 1
                    // Tried again while attempts are left, unless the drain deadline comes before the retry would.
                    let retry = attempt < configuration.retries && !s.abandoned
                        && s.finishDeadline.map { now.advanced(by: delay) < $0 } ?? true
                    if !retry {
                        s.counters.failed += batch.count
                        s.inFlight = nil
                    }
                    return (retry, s.statistics, retry ? [] : s.satisfiedFlushWaiters(),
                            retry ? [] : s.takeRoomWaiters())
                }
                for waiter in flushed { waiter.resume() }
                for body in room { body() }
                observe(.writeFailed(batch.count, error: error, willRetry: retry), stats)
                guard retry else { return }
                attempt += 1
                do {
                    try await Task.sleep(for: delay)
                } catch {
                    // Cancelled: the loop abandons; count the batch as failed, it will not be tried again.
                    let flushed = state.withLock { s in
                        s.counters.failed += batch.count
                        s.inFlight = nil
                        return s.satisfiedFlushWaiters()
                    }
                    for waiter in flushed { waiter.resume() }
                    return
                }
            }
        }
    }

    /// Runs `write` in a task of its own and waits for it, or until the writer is abandoned (drain timeout,
    /// cancellation), whichever comes first.
    func attemptWrite(_ batch: [Element]) async -> WriteOutcome {
        let id = state.withLock { s -> UInt64 in
            defer { s.nextWriteID += 1 }
            return s.nextWriteID
        }
        return await withTaskCancellationHandler {
            await withCheckedContinuation { (continuation: CheckedContinuation<WriteOutcome, Never>) in
                let registered = state.withLock { s -> Bool in
                    if s.abandoned { return false }
                    s.pendingWrite = PendingWrite(id: id, continuation: continuation, task: nil)
                    return true
                }
                guard registered else {
                    continuation.resume(returning: .abandoned)
                    return
                }
                let write = self.write
                // Unstructured on purpose: a write that hangs past the drain timeout must not hold run().
                let task = Task { [self] in
                    let outcome: WriteOutcome
                    do {
                        try await write(batch)
                        outcome = .written
                    } catch {
                        outcome = .failed(error)
                    }
                    writeReturned(id, outcome, count: batch.count)
                }
                let abandonedMeanwhile = state.withLock { s -> Bool in
                    if s.pendingWrite?.id == id { s.pendingWrite?.task = task }
                    return s.abandoned
                }
                if abandonedMeanwhile { task.cancel() }
            }
        } onCancel: {
            abandon(because: "its task was cancelled")
        }
    }

    /// A write's task is done: hand the outcome to the waiting writer, or (abandoned) count it here.
    func writeReturned(_ id: UInt64, _ outcome: WriteOutcome, count: Int) {
        let (waiting, late, flushed) = state.withLock { s -> (CheckedContinuation<WriteOutcome, Never>?, BatchWriterStatistics?, [CheckedContinuation<Void, Never>]) in
            if let pending = s.pendingWrite, pending.id == id {
                s.pendingWrite = nil
                return (pending.continuation, nil, [])
            }
            // Abandoned while it ran: it is the last word on these elements.
            switch outcome {
            case .written: s.counters.written += count
            case .failed:
                s.counters.failedWrites += 1
                s.counters.failed += count
            case .abandoned: break
            }
            s.inFlight = nil
            return (nil, s.statistics, s.satisfiedFlushWaiters())
        }
        if let waiting {
            waiting.resume(returning: outcome)
            return
        }
        for waiter in flushed { waiter.resume() }
        if let late {
            switch outcome {
            case .written: observe(.written(count), late)
            case .failed(let error): observe(.writeFailed(count, error: error, willRetry: false), late)
            case .abandoned: break
            }
        }
    }

    /// Stops the writer where it is: a waiting writer and a write in progress are let go (the write's task is
    /// cancelled; its elements stay queued until it returns). Logs what is left.
    func abandon(because reason: String) {
        let taken = state.withLock { s -> (PendingWrite?, CheckedContinuation<Void, Never>?, [CheckedContinuation<Void, Never>], Int)? in
            guard !s.abandoned else { return nil }
            s.abandoned = true
            defer { s.pendingWrite = nil }
            return (s.pendingWrite, s.takeWaiter(), s.satisfiedFlushWaiters(), s.queued)
        }
        guard let (pending, waiter, flushed, queued) = taken else { return }
        pending?.task?.cancel()
        pending?.continuation.resume(returning: .abandoned)
        waiter?.resume()
        for waiter in flushed { waiter.resume() }
        if queued > 0 {
            logger.info("batch writer stopped before its queue was written",
                        metadata: ["writer.label": "\(label)", "writer.queued": "\(queued)", "writer.reason": "\(reason)"])
        }
    }

    /// Waits for ``finish()`` (or cancellation), then for the drain deadline, and abandons what is left then.
    func watchDrainDeadline() async {
        await withTaskCancellationHandler {
            await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
                let ready = state.withLock { s -> Bool in
                    if s.finishing || s.stopped || Task.isCancelled { return true }
                    s.finishWatcher = continuation
                    return false
                }
                if ready { continuation.resume() }
            }
        } onCancel: {
            let watcher = state.withLock { s -> CheckedContinuation<Void, Never>? in
                defer { s.finishWatcher = nil }
                return s.finishWatcher
            }
            watcher?.resume()
        }
        guard !Task.isCancelled, let deadline = state.withLock({ $0.finishDeadline }) else { return }
        do {
            try await Task.sleep(until: deadline, clock: .continuous)
        } catch {
            return
        }
        abandon(because: "the drain timeout of \(configuration.drainTimeout) passed")
    }

    /// Waits until `signal()` (an append, `flush`, `finish`), the deadline or cancellation.
    func waitForSignal(until deadline: ContinuousClock.Instant?) async {
        await withTaskGroup(of: Void.self) { group in
            if let deadline {
                group.addTask { [self] in
                    do {
                        try await Task.sleep(until: deadline, clock: .continuous)
                        signal()
                    } catch {}
                }
            }
            await withTaskCancellationHandler {
                await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
                    let now = state.withLock { s -> Bool in
                        if s.signaled || s.abandoned || s.finishing || Task.isCancelled {
                            s.signaled = false
                            return true
                        }
                        s.waiter = continuation
                        return false
                    }
                    if now { continuation.resume() }
                }
            } onCancel: {
                signal()
            }
            group.cancelAll()
        }
    }

    func signal() {
        let waiter = state.withLock { s -> CheckedContinuation<Void, Never>? in
            if let waiter = s.takeWaiter() { return waiter }
            s.signaled = true
            return nil
        }
        waiter?.resume()
    }
}
