import Dispatch
import Foundation
import Reactor
import Synchronization
import Testing
import TestSupport

#if canImport(Glibc)
import Glibc
#endif

/// A standalone loop, running on a thread of its own; `returned` is signalled when `run()` returns.
private func startLoop(poller: PollerKind, busyPoll: Duration = .zero) throws
    -> (loop: EventLoop, returned: EventCounter)
{
    let loop = try EventLoop(configuration: LoopConfiguration(poller: poller, busyPoll: busyPoll))
    let returned = EventCounter()
    Thread {
        loop.run()
        returned.signal()
    }.start()
    #expect(eventually { loop.kernelThreadID != 0 }, "the loop thread never started running")
    return (loop, returned)
}

/// A standalone loop run by its own thread for the duration of `body`; stopped and joined (bounded) afterwards.
private func withRunningLoop<R>(poller: PollerKind, busyPoll: Duration = .zero,
                                _ body: (EventLoop) throws -> R) throws -> R {
    let (loop, finished) = try startLoop(poller: poller, busyPoll: busyPoll)
    defer {
        loop.stop()
        #expect(finished.wait(for: 1, timeout: 10), "run() did not return after stop()")
    }
    return try body(loop)
}

/// CLOCK_MONOTONIC in nanoseconds: the clock the loop's timers use.
private func monotonicNanoseconds() -> UInt64 {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return UInt64(ts.tv_sec) * 1_000_000_000 + UInt64(ts.tv_nsec)
}

@Suite("Event loop: tasks and timers", .serialized)
struct LoopTaskTimerTests {
    @Test("atEndOfIteration: after the iteration's tasks, in the same iteration, bodies of bodies too, in order",
          arguments: PollerKind.allCases)
    func endOfIteration(poller: PollerKind) throws {
        try withRunningLoop(poller: poller) { loop in
            let log = Shared<[String]>([])
            let iterations = Shared<[UInt64]>([])
            let done = EventCounter()
            loop.execute {
                // Three tasks of one batch: the first registers the end body, the others run before it.
                loop.execute {
                    loop.atEndOfIteration {
                        log.update { $0.append("end 1") }
                        iterations.update { $0.append(loop.iterations) }
                        loop.atEndOfIteration {
                            log.update { $0.append("end 2") }
                            iterations.update { $0.append(loop.iterations) }
                            done.signal()
                        }
                    }
                    log.update { $0.append("task a") }
                    iterations.update { $0.append(loop.iterations) }
                }
                loop.execute { log.update { $0.append("task b") } }
                loop.execute { log.update { $0.append("task c") } }
            }
            #expect(done.wait(for: 1))
            #expect(log.get() == ["task a", "task b", "task c", "end 1", "end 2"])
            let seen = iterations.get()
            #expect(seen.count == 3 && Set(seen).count == 1, "one iteration for the tasks and both bodies: \(seen)")
        }
    }

    @Test("atEndOfIteration bodies registered when the loop is asked to stop still run", arguments: PollerKind.allCases)
    func endOfIterationAtStop(poller: PollerKind) throws {
        let (loop, finished) = try startLoop(poller: poller)
        let ran = EventCounter()
        loop.execute {
            loop.atEndOfIteration { ran.signal() }
            loop.stop()
        }
        #expect(ran.wait(for: 1))
        #expect(finished.wait(for: 1, timeout: 10))
    }

    @Test("tasks posted from 8 threads x 1000 all run on the loop, in order per posting thread",
          arguments: PollerKind.allCases)
    func tasksFromManyThreads(poller: PollerKind) throws {
        let threads = 8
        let perThread = 1000
        try withRunningLoop(poller: poller) { loop in
            let seen = Shared<[[Int]]>(Array(repeating: [], count: threads))
            let offLoop = Shared<Int>(0)
            let ran = EventCounter()
            let posted = EventCounter()
            for t in 0..<threads {
                Thread {
                    for i in 0..<perThread {
                        loop.execute {
                            if !loop.inLoopThread { offLoop.update { $0 += 1 } }
                            seen.update { $0[t].append(i) }
                            ran.signal()
                        }
                    }
                    posted.signal()
                }.start()
            }
            #expect(posted.wait(for: threads, timeout: 20))
            #expect(ran.wait(for: threads * perThread, timeout: 20))
            #expect(ran.count == threads * perThread)
            #expect(offLoop.get() == 0)
            let lists = seen.get()
            for t in 0..<threads {
                #expect(lists[t] == Array(0..<perThread), "tasks of posting thread \(t) ran out of order or not at all")
            }
        }
    }

    @Test("execute from the loop thread itself runs after the current task; executeInLoop runs at once",
          arguments: PollerKind.allCases)
    func executeFromLoopThread(poller: PollerKind) throws {
        try withRunningLoop(poller: poller) { loop in
            let order = Shared<[String]>([])
            let done = EventCounter()
            loop.execute {
                order.update { $0.append("outer start") }
                loop.execute {
                    order.update { $0.append(loop.inLoopThread ? "posted from loop" : "posted: WRONG THREAD") }
                    // A task posted by a task posted from the loop: the loop must not fall asleep on it.
                    loop.execute {
                        order.update { $0.append("second level") }
                        done.signal()
                    }
                }
                loop.executeInLoop { order.update { $0.append("inline") } }
                order.update { $0.append("outer end") }
            }
            #expect(done.wait(for: 1, timeout: 5))
            #expect(order.get() == ["outer start", "inline", "outer end", "posted from loop", "second level"])

            // From a timer callback too (tasks posted there run in the same iteration or the next).
            let fromTimer = EventCounter()
            loop.schedule(after: .milliseconds(5)) {
                loop.execute { if loop.inLoopThread { fromTimer.signal() } }
            }
            #expect(fromTimer.wait(for: 1, timeout: 5))
        }
    }

    @Test("timers fire in deadline order, never early", arguments: PollerKind.allCases)
    func timersFireInOrder(poller: PollerKind) throws {
        try withRunningLoop(poller: poller) { loop in
            let delaysMs = [70, 10, 50, 30, 90, 20, 60, 40, 80, 0]
            // Each timer's deadline lies between (its schedule call's start, its end) + its delay: a pair whose
            // windows do not overlap must fire in that order, whatever delay a loaded machine puts between calls.
            func checkOrder(_ windows: [(from: UInt64, to: UInt64)], _ fired: [(index: Int, atNs: UInt64)]) {
                #expect(Set(fired.map(\.index)) == Set(delaysMs.indices))
                let position = Dictionary(uniqueKeysWithValues: fired.enumerated().map { ($1.index, $0) })
                for i in delaysMs.indices {
                    for j in delaysMs.indices where windows[i].to < windows[j].from {
                        #expect(position[i]! < position[j]!, "timer \(i) (\(delaysMs[i]) ms) after \(j)")
                    }
                }
                for r in fired {
                    #expect(r.atNs >= windows[r.index].from, "timer \(r.index) fired early")
                }
            }
            @Sendable func schedule(into fired: Shared<[(index: Int, atNs: UInt64)]>, _ count: EventCounter)
                -> [(from: UInt64, to: UInt64)]
            {
                delaysMs.enumerated().map { index, ms in
                    let before = monotonicNanoseconds()
                    loop.schedule(after: .milliseconds(ms)) {
                        fired.update { $0.append((index, monotonicNanoseconds())) }
                        count.signal()
                    }
                    let delay = UInt64(ms) * 1_000_000
                    return (before + delay, monotonicNanoseconds() + delay)
                }
            }
            // Scheduled from this (non-loop) thread...
            let fired = Shared<[(index: Int, atNs: UInt64)]>([])
            let count = EventCounter()
            let windows = schedule(into: fired, count)
            #expect(count.wait(for: delaysMs.count, timeout: 10))
            checkOrder(windows, fired.get())

            // ...and from the loop thread.
            let onLoopFired = Shared<[(index: Int, atNs: UInt64)]>([])
            let onLoopCount = EventCounter()
            let onLoopWindows = Shared<[(from: UInt64, to: UInt64)]>([])
            loop.execute { onLoopWindows.set(schedule(into: onLoopFired, onLoopCount)) }
            #expect(onLoopCount.wait(for: delaysMs.count, timeout: 10))
            checkOrder(onLoopWindows.get(), onLoopFired.get())
            // On a quiet machine the windows are microseconds wide: the check orders nearly every pair.
        }
    }

    @Test("a cancelled timer never fires (cancelled on the loop thread, from another thread, by an earlier timer)",
          arguments: PollerKind.allCases)
    func cancelledTimersNeverFire(poller: PollerKind) throws {
        try withRunningLoop(poller: poller) { loop throws in
            let wrongFires = Shared<[String]>([])
            let sentinel = EventCounter()

            // 1. On the loop thread, before it is due.
            loop.execute {
                let h = loop.schedule(after: .milliseconds(20)) { wrongFires.update { $0.append("loop-cancelled") } }
                loop.cancel(h)
            }
            // 2. From this thread, well before its deadline (the cancel hops to the loop behind the schedule).
            // 2 s: the cancel reaches the loop before the deadline even when a loaded machine stalls this thread.
            let h2 = loop.schedule(after: .seconds(2)) { wrongFires.update { $0.append("off-loop-cancelled") } }
            h2.cancel()
            // 3. By an earlier timer whose deadline is in the same tick.
            loop.execute {
                let victim = Shared<TimerHandle?>(nil)
                loop.schedule(after: .milliseconds(30)) { victim.get()?.cancel() }
                victim.set(loop.schedule(after: .milliseconds(30)) { wrongFires.update { $0.append("same-tick") } })
            }
            // A live timer scheduled after all of them proves the loop ran past their deadlines.
            let kept = EventCounter()
            loop.schedule(after: .milliseconds(40)) { kept.signal() }
            loop.schedule(after: .milliseconds(2200)) { sentinel.signal() }
            #expect(sentinel.wait(for: 1, timeout: 5))
            #expect(kept.count == 1)
            #expect(wrongFires.get() == [])
            // Cancelling a timer that already fired does nothing.
            let fired = EventCounter()
            let h4 = loop.schedule(after: .milliseconds(1)) { fired.signal() }
            #expect(fired.wait(for: 1, timeout: 5))
            h4.cancel()
            #expect(try onLoop(loop) { true })
        }
    }

    @Test("scheduleRepeating fires repeatedly and stops after cancel", arguments: PollerKind.allCases)
    func repeatingTimer(poller: PollerKind) throws {
        try withRunningLoop(poller: poller) { loop in
            // Cancelled from another thread.
            let ticks = EventCounter()
            let handle = loop.scheduleRepeating(every: .milliseconds(10)) { ticks.signal() }
            #expect(ticks.wait(for: 5, timeout: 5))
            loop.cancel(handle)
            // The cancel was posted before this barrier task, so once it has run the timer is gone.
            let afterCancel = try onLoop(loop) { ticks.count }
            let window = EventCounter()
            loop.schedule(after: .milliseconds(120)) { window.signal() }  // 12 intervals
            #expect(window.wait(for: 1, timeout: 5))
            #expect(ticks.count == afterCancel, "a cancelled repeating timer kept firing")

            // Cancelled by itself on its third tick.
            let selfTicks = Shared<Int>(0)
            let third = EventCounter()
            let own = Shared<TimerHandle?>(nil)
            _ = try onLoop(loop) {
                own.set(loop.scheduleRepeating(every: .milliseconds(5), initialDelay: .milliseconds(1)) {
                    selfTicks.update { $0 += 1 }
                    if selfTicks.get() == 3 {
                        own.get()?.cancel()
                        third.signal()
                    }
                })
                return true
            }
            #expect(third.wait(for: 1, timeout: 5))
            let window2 = EventCounter()
            loop.schedule(after: .milliseconds(60)) { window2.signal() }
            #expect(window2.wait(for: 1, timeout: 5))
            #expect(selfTicks.get() == 3)
        }
    }

    @Test("stop() from another thread makes run() return; tasks posted before the stop still run",
          arguments: PollerKind.allCases)
    func stopFromAnotherThread(poller: PollerKind) throws {
        let (loop, returned) = try startLoop(poller: poller)
        // The loop is asleep in its poller (a far timer, no I/O): stop must wake it.
        loop.schedule(after: .seconds(60)) {}
        #expect(try onLoop(loop) { true })
        let lastTask = EventCounter()
        loop.execute { lastTask.signal() }
        let stopped = monotonicNanoseconds()
        loop.stop()
        #expect(returned.wait(for: 1, timeout: 5))
        #expect(loop.hasFinished)
        #expect(lastTask.count == 1)
        #expect(Double(monotonicNanoseconds() - stopped) / 1e9 < 5)
    }

    @Test("a task posted after the loop stopped is released, not kept: what it holds is freed; waiting on it throws",
          arguments: PollerKind.allCases)
    func taskAfterStopIsReleased(poller: PollerKind) throws {
        let (loop, returned) = try startLoop(poller: poller)
        // A task posted before the stop posts another: both run while the loop winds down.
        let ran = EventCounter()
        loop.execute {
            ran.signal()
            loop.execute { ran.signal() }
        }
        loop.stop()
        #expect(returned.wait(for: 1, timeout: 5))
        #expect(ran.count == 2)

        // Posted afterwards: never runs, and the closure (with what it captured) is released at once. A queue
        // that kept it would keep the captured object, often the loop itself, alive for good.
        final class Payload: Sendable {}
        weak var weakPayload: Payload?
        do {
            let payload = Payload()
            weakPayload = payload
            loop.execute { _ = payload; ran.signal() }
        }
        #expect(weakPayload == nil, "the stopped loop kept the task")
        #expect(ran.count == 2)

        // Anything that waits for the loop fails at once instead of waiting forever.
        #expect(throws: ReactorError.loopStopped) {
            _ = try UDPChannel(loop: loop) { _, _, _ in }
        }
    }

    @Test("a group whose last reference goes away on one of its own loops stops its loops (it cannot join itself)",
          arguments: PollerKind.allCases)
    func groupReleasedOnItsOwnLoop(poller: PollerKind) async {
        await #expect(processExitsWith: .success) { [name = poller.rawValue as String] in
            var group: EventLoopGroup? = try EventLoopGroup(
                ioLoops: 1, configuration: LoopConfiguration(poller: PollerKind(rawValue: name)!),
                placement: .roundRobin)
            let loop = group!.ioLoops[0]
            let release = DispatchSemaphore(value: 0)
            // The task holds the group; once it has run, the loop drops the last reference, on its own thread.
            loop.execute { [group] in
                _ = release.wait(timeout: .now() + 10)
                _ = group
            }
            group = nil
            release.signal()
            #expect(eventually { loop.hasFinished }, "the loops of a released group kept running")
        }
    }

    @Test("a second loop on a thread that already runs one stops the process")
    func secondLoopOnOneThread() async {
        let result = await #expect(processExitsWith: .failure, observing: [\.standardErrorContent]) {
            let first = try EventLoop()
            let second = try EventLoop()
            Thread { first.run() }.start()
            first.execute { second.run() }
            // If the misuse were not caught, the process would go on and exit 0: the expectation then fails.
            usleep(3_000_000)
            exit(0)
        }
        #if DEBUG
        if let result {
            let stderr = String(decoding: result.standardErrorContent, as: UTF8.self)
            #expect(stderr.contains("one loop per thread"), "unexpected message: \(stderr)")
        }
        #endif
    }

    @Test("running one loop twice stops the process")
    func runTwice() async {
        await #expect(processExitsWith: .failure) {
            let loop = try EventLoop()
            loop.stop()
            loop.run()  // returns at once: stop was requested
            loop.run()
            exit(0)
        }
    }

    @Test("busy polling: the loop keeps polling for the window after an event, then sleeps again",
          arguments: PollerKind.allCases)
    func busyPollWindow(poller: PollerKind) throws {
        // A window long enough that a loaded machine still runs the loop's thread many times inside it (a 40 ms one
        // can pass while the thread waits for a core).
        let window = Duration.milliseconds(500)
        try withRunningLoop(poller: poller, busyPoll: window) { loop in
            // Asleep before any event (no timers, nothing posted): the count stands still.
            let ran = EventCounter()
            // Counted from before the event: the window's wake-ups happen whenever this thread gets to look.
            let beforeEvent = loop.iterations
            loop.execute { ran.signal() }
            #expect(ran.wait(for: 1))
            // The window runs from the task (the event), which ran before this point.
            let start = monotonicNanoseconds()
            // Inside the window the loop wakes up over and over without any event.
            #expect(eventually { loop.iterations - beforeEvent > 20 }, "the loop did not poll after the event")
            // Once the window is over it sleeps: the count stays put over an observation window of 200 ms.
            let past = Int64(start) + 500_000_000 + 200_000_000 - Int64(monotonicNanoseconds())
            if past > 0 { usleep(UInt32(past / 1000)) }  // well past the window
            let quiet = loop.iterations
            usleep(200_000)  // an observation window: a loop still polling would wake thousands of times in it
            #expect(loop.iterations - quiet <= 1, "the loop kept polling after its window")
            // A task posted later still runs (the loop sleeps in the poller, the wake-up reaches it).
            loop.execute { ran.signal() }
            #expect(ran.wait(for: 2))
        }
    }

    @Test("no busy polling by default: an event costs one wake-up, not a spin", arguments: PollerKind.allCases)
    func noBusyPollByDefault(poller: PollerKind) throws {
        try withRunningLoop(poller: poller) { loop in
            let ran = EventCounter()
            loop.execute { ran.signal() }
            #expect(ran.wait(for: 1))
            let after = loop.iterations
            usleep(100_000)  // an observation window
            #expect(loop.iterations - after <= 1)
        }
    }

    @Test("a task that prefers a loop as its executor runs on the loop thread, before and after a suspension",
          arguments: PollerKind.allCases)
    func loopAsTaskExecutor(poller: PollerKind) async throws {
        let loop = try EventLoop(configuration: LoopConfiguration(poller: poller))
        let finished = EventCounter()
        Thread {
            loop.run()
            finished.signal()
        }.start()
        defer {
            loop.stop()
            #expect(finished.wait(for: 1, timeout: 10))
        }
        let observed = try await Task(executorPreference: loop) { () async throws -> [Bool] in
            var onLoop = [loop.inLoopThread]
            // Resumed from another thread: the task still carries on on the loop.
            let value = await withCheckedContinuation { (c: CheckedContinuation<Int, Never>) in
                Thread { c.resume(returning: 42) }.start()
            }
            onLoop.append(loop.inLoopThread && value == 42)
            // Resumed from the loop itself (as a client's reply handler does).
            await withCheckedContinuation { (c: CheckedContinuation<Void, Never>) in
                loop.schedule(after: .milliseconds(5)) { c.resume() }
            }
            onLoop.append(loop.inLoopThread)
            try await Task.sleep(for: .milliseconds(5))
            onLoop.append(loop.inLoopThread)
            return onLoop
        }.value
        #expect(observed == [true, true, true, true])
        #expect(!loop.inLoopThread)
    }
}
