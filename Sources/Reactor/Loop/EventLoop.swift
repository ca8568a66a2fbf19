#if canImport(Glibc)
import Glibc
#endif
import CSwitchyardLinux
import Logging
import SwitchyardCore
import Synchronization

/// One reactor: a poller, a task queue any thread may post to, and timers, run by exactly one thread.
///
/// Objects bound to a loop (connections, acceptors) are touched on that loop only; from other threads, use
/// `execute(_:)`. A thread runs at most one loop: starting a second one on the same thread stops the process.
public final class EventLoop: @unchecked Sendable {
    // @unchecked Sendable: the mutable state below the "loop thread only" mark is touched only by the thread
    // running `run()` (checked with `assertInLoopThread` in debug builds); the cross-thread state is a Mutex
    // and Atomics.

    /// Index of the loop inside its group (0 for a standalone loop).
    public let index: Int
    /// The poller this loop runs on.
    public let pollerKind: PollerKind
    public let configuration: LoopConfiguration
    /// Where the loop logs (poller failures, tasks posted to a stopped loop). No logging on the per-message path.
    public let logger: Logger

    // Cross-thread state.
    private let pendingTasks = Mutex(TaskQueue())
    /// Tasks in `pendingTasks`, readable without the lock (the loop checks it every iteration).
    private let pendingCount = Atomic<Int>(0)
    private let wakeupPending = Atomic<Bool>(false)
    private let quitRequested = Atomic<Bool>(false)
    private let threadID = Atomic<Int32>(0)
    private let iterationCounter = Atomic<UInt64>(0)
    private let nextTimerID = Atomic<UInt64>(1)
    private let runningState = Atomic<Int>(0)  // 0 not started, 1 running, 2 finished
    /// Set when the task queue closes at the end of `run()`: from then on no task runs on the loop, and what it
    /// owned is released by whoever holds it (`executeOrRunIfStopped`).
    private let tasksClosed = Atomic<Bool>(false)
    /// Server connections placed on this loop and not yet closed (the group's placement reads it).
    let placedConnections = Atomic<Int>(0)

    // Loop thread only. @exclusivity(unchecked): run() and the handlers it calls are one thread; handlers are
    // taken out of `handlers` before they run and timers are popped before they fire, so no access spans a callback.
    let poller: any Poller
    private let wakeFD: Int32
    @exclusivity(unchecked) private var handlers: [EventHandler?] = []
    @exclusivity(unchecked) private var timers = TimerQueue()
    private let events: UnsafeMutablePointer<sy_event>
    private let eventCapacity = 512
    @exclusivity(unchecked) private var runningTasks = false
    /// Monotonic time (ns) when the poller last returned: a cheap "now" for activity stamps. Loop thread only.
    @exclusivity(unchecked) public private(set) var wakeTime: UInt64 = sy_monotonic_ns()
    /// When the poller last returned at least one event (for busy polling). Loop thread only.
    @exclusivity(unchecked) private var lastEventTime: UInt64 = 0
    private let busyPollNanoseconds: UInt64
    /// Per-loop scratch area: reads land here first.
    let scratch: UnsafeMutableRawBufferPointer
    /// Per-loop buffer pool.
    let pool: BufferPool
    /// Empty pipes the loop's tunnels splice through (`TCPTunnel`). Loop thread only.
    @exclusivity(unchecked) var tunnelPipes = TunnelPipePool()
    @exclusivity(unchecked) private var wakeHandler: WakeupHandler?
    /// True while the events of one poller wait are handled. Loop thread only.
    @exclusivity(unchecked) private var handlingBatch = false
    /// What runs once this iteration's events, timers and tasks are handled (``atEndOfIteration(_:)``).
    @exclusivity(unchecked) private var iterationEnd: [() -> Void] = []
    /// Descriptors unregistered while the current batch is handled: the batch's later events for those numbers
    /// are stale. Loop thread only.
    @exclusivity(unchecked) private var retiredInBatch: [Int32] = []
    /// True while the pool's maintenance timer (decay, trim) is scheduled. Loop thread only.
    @exclusivity(unchecked) private var poolMaintenanceArmed = false
    /// True when a trim was due but another trim ran less than a second ago: the timer comes back for it.
    @exclusivity(unchecked) private var trimPending = false
    /// Bytes of buffers the loops of this process gave back to malloc since the last `malloc_trim`.
    private static let freedSinceTrim = Atomic<Int>(0)
    /// When the process last trimmed (monotonic ns; 0: never).
    private static let lastTrim = Atomic<UInt64>(0)
    /// `malloc_trim` calls made by the loops of this process.
    private static let trimCounter = Atomic<Int>(0)

    /// Creates a loop; it runs when some thread calls `run()`.
    public init(
        configuration: LoopConfiguration = LoopConfiguration(), index: Int = 0,
        logger: Logger = Logger(label: "switchyard.reactor", factory: { _ in SwiftLogNoOpLogHandler() })
    ) throws {
        self.configuration = configuration
        self.logger = logger
        self.index = index
        self.pollerKind = configuration.poller
        self.busyPollNanoseconds = configuration.busyPoll.nanosecondsSaturated
        self.poller = try makePoller(configuration.poller)
        let fd = sy_eventfd()
        if fd < 0 {
            poller.close()
            throw IOError(errnoCode: errno, call: "eventfd")
        }
        wakeFD = fd
        events = .allocate(capacity: eventCapacity)
        scratch = .allocate(byteCount: max(4096, configuration.scratchBytes), alignment: BufferPool.alignment)
        pool = BufferPool(capBytes: configuration.poolCapBytes, maxBufferBytes: configuration.maxBufferBytes)
        Posix.ignoreSIGPIPE()
        let handler = WakeupHandler(fd: fd, loop: self)
        wakeHandler = handler
        // Every stored property is set by now, so a throw from here on runs `deinit`, which closes and frees
        // all of it; closing here too would close the descriptor numbers twice (select refuses a wake-up
        // descriptor >= FD_SETSIZE, which is how this path is taken).
        // Not `register`: no thread runs this loop yet, and its creator is the only one that knows it.
        try poller.register(fd: fd, interest: .read)
        setHandler(handler, for: fd)
    }

    deinit {
        poller.close()
        Posix.close(wakeFD)
        events.deallocate()
        scratch.deallocate()
        pool.drain()
    }

    // MARK: Thread identity

    /// The loop running on the calling thread, if any.
    public static var current: EventLoop? {
        guard let raw = sy_current_loop() else { return nil }
        return Unmanaged<EventLoop>.fromOpaque(raw).takeUnretainedValue()
    }

    /// True on the thread running this loop. Safe to call from any thread.
    @inline(__always)
    public var inLoopThread: Bool { sy_current_loop() == Unmanaged.passUnretained(self).toOpaque() }

    /// Stops the process when called off the loop's thread (debug builds only): the check of every loop-only entry
    /// point. Safe to call from any thread.
    @inline(__always)
    public func assertInLoopThread(file: StaticString = #fileID, line: UInt = #line) {
        assert(inLoopThread, "called off the thread of loop \(index): loop thread only", file: file, line: line)
    }

    /// True on the loop's thread, or on any thread once the loop has stopped for good (its task queue has closed at
    /// the end of `run()`): then no task runs on it, and whoever holds what it owned may release it
    /// (`executeOrRunIfStopped`). Safe to call from any thread.
    var isOwnedByCallingThread: Bool { inLoopThread || tasksClosed.load(ordering: .acquiring) }

    /// `assertInLoopThread` for the calls that also release what a stopped loop owned (unregistering a descriptor,
    /// closing a listener): passes as well once the loop has returned from `run()` for good. Debug builds only.
    @inline(__always)
    func assertInLoopThreadOrStopped(file: StaticString = #fileID, line: UInt = #line) {
        assert(isOwnedByCallingThread, "called off the thread of loop \(index) while it runs: loop thread only",
               file: file, line: line)
    }

    /// The check of `LoopBound`: stops the process, in release builds too, unless `isOwnedByCallingThread`.
    func preconditionOwned(_ what: StaticString, file: StaticString = #fileID, line: UInt = #line) {
        precondition(isOwnedByCallingThread, "\(what) off the thread of loop \(index) while it runs: loop thread only",
                     file: file, line: line)
    }

    /// Kernel thread id of the thread running the loop (0 before `run()`); for /proc/self/task/TID/stat.
    public var kernelThreadID: Int32 { threadID.load(ordering: .acquiring) }

    /// Poller wake-ups so far: a loop that is idle does not count up. Safe to read from any thread.
    public var iterations: UInt64 { iterationCounter.load(ordering: .relaxed) }

    /// Server connections placed on this loop and not yet closed (a connection counts from the moment it is
    /// placed, before it is registered). Safe to read from any thread.
    public var serverConnectionCount: Int { placedConnections.load(ordering: .relaxed) }

    /// True once `run()` has returned.
    public var hasFinished: Bool { runningState.load(ordering: .acquiring) == 2 }

    // MARK: Running

    /// Runs the loop on the calling thread until `stop()`. The thread must not already run a loop.
    public func run() {
        if let other = sy_current_loop() {
            preconditionFailure(
                "a second EventLoop on one thread: this thread already runs loop \(other); one loop per thread")
        }
        let (exchanged, _) = runningState.compareExchange(expected: 0, desired: 1, ordering: .acquiringAndReleasing)
        precondition(exchanged, "EventLoop.run() called twice")
        sy_set_current_loop(Unmanaged.passUnretained(self).toOpaque())
        threadID.store(sy_gettid(), ordering: .releasing)
        defer {
            sy_set_current_loop(nil)
            runningState.store(2, ordering: .releasing)
        }

        while !quitRequested.load(ordering: .acquiring) {
            let timeout = computeTimeoutMs()
            let n: Int
            do {
                n = try poller.wait(timeoutMs: timeout, events: events, capacity: eventCapacity)
            } catch {
                logger.error("poller wait failed, loop stops", metadata: ["loop": "\(index)", "error": "\(error)"])
                break
            }
            iterationCounter.wrappingAdd(1, ordering: .relaxed)
            wakeTime = sy_monotonic_ns()
            if n > 0 {
                lastEventTime = wakeTime
            } else if timeout == 0 && busyPollNanoseconds > 0 {
                // Polling with nothing to do: let a thread waiting for this core (often the peer this loop is
                // waiting for) run first.
                sched_yield()
            }
            handlingBatch = true
            for i in 0..<n {
                let ev = events[i]
                // An event of a descriptor unregistered earlier in this batch belongs to the old registration,
                // even if the number already serves a new socket (accepted on this loop since).
                if !retiredInBatch.isEmpty && retiredInBatch.contains(ev.fd) { continue }
                let fd = Int(ev.fd)
                if fd < handlers.count, let handler = handlers[fd] {
                    handler.handleEvents(ev.events)
                }
            }
            handlingBatch = false
            if !retiredInBatch.isEmpty { retiredInBatch.removeAll(keepingCapacity: true) }
            runExpiredTimers()
            runPendingTasks()
            if !iterationEnd.isEmpty { runIterationEnd() }
            if !poolMaintenanceArmed && (pool.needsMaintenance || trimPending) { armPoolMaintenance() }
        }
        // Tasks posted before the stop still run (and what they post in turn), so nothing handed to the loop is
        // lost. Handlers still registered are released (`releaseHandlers`): their close callbacks may post more.
        // Then the queue closes: a task posted later is released at once instead of being kept, with all it holds
        // (often this loop itself), by a loop that will never run it.
        for _ in 0..<100 {
            runPendingTasks()
            if !iterationEnd.isEmpty { runIterationEnd() }
            if releaseHandlers() { continue }
            let drained = pendingTasks.withLock { q -> Bool in
                guard q.tasks.isEmpty else { return false }
                q.closed = true
                tasksClosed.store(true, ordering: .releasing)
                return true
            }
            if drained { break }
        }
        // A task that kept posting itself: what is left is released outside the lock (a released task's captures
        // may post again, and are then refused).
        let left = pendingTasks.withLock { q -> [@Sendable () -> Void] in
            q.closed = true
            tasksClosed.store(true, ordering: .releasing)
            defer { q.tasks.removeAll() }
            return q.tasks
        }
        _ = consume left
        _ = releaseHandlers()
        // The timers go last, with those scheduled by the tasks above; from now on none is taken (`scheduleTimer`).
        timers.removeAll()
        tunnelPipes.closeAll()
    }

    /// The end of `run()`, on the loop thread: every handler still registered will never be served, and it would be
    /// kept for good by a cycle through the loop (a connection holds its loop, the loop its handlers and its timers'
    /// closures, which hold connections and their owners). Each is told (`loopDidStop`: a connection closes and
    /// fires its close callbacks, its server forgets it), then forgotten; the wake-up handler stays. True when there
    /// was any.
    private func releaseHandlers() -> Bool {
        var released = false
        for fd in handlers.indices where fd != Int(wakeFD) {
            guard let handler = handlers[fd] else { continue }
            handlers[fd] = nil
            released = true
            handler.loopDidStop()
        }
        return released
    }

    /// Asks the loop to return from `run()` after its current iteration. Safe to call from any thread.
    public func stop() {
        quitRequested.store(true, ordering: .releasing)
        wakeup()
    }

    private func computeTimeoutMs() -> Int32 {
        if pendingCount.load(ordering: .acquiring) > 0 { return 0 }
        if busyPollNanoseconds > 0, wakeTime &- lastEventTime < busyPollNanoseconds { return 0 }
        guard let ns = timers.nanosecondsUntilNext(now: sy_monotonic_ns()) else { return -1 }
        if ns == 0 { return 0 }
        // Round up so a timer is never woken for early.
        return Int32(min((ns + 999_999) / 1_000_000, 10_000))
    }

    // MARK: Tasks

    /// Runs `task` on the loop's thread: soon, in order with the other tasks posted from the same thread.
    /// Safe to call from any thread. From the loop thread itself the task runs after the current handler.
    /// A task posted after the loop has returned from `run()` is released without running (logged at debug).
    public func execute(_ task: @escaping @Sendable () -> Void) {
        if !enqueue(task) {
            logger.debug("task posted to a stopped loop, dropped", metadata: ["loop": "\(index)"])
        }
    }

    /// Queues `task`; false, with the task released, when the loop has returned from `run()` for good.
    func enqueue(_ task: @escaping @Sendable () -> Void) -> Bool {
        let queued = pendingTasks.withLock { q -> Bool in
            if q.closed { return false }
            q.tasks.append(task)
            pendingCount.wrappingAdd(1, ordering: .releasing)
            return true
        }
        if queued && (!inLoopThread || runningTasks) {
            wakeup()
        }
        return queued
    }

    /// Runs `body` on this loop's thread once the current iteration has handled its events, timers and tasks,
    /// before the loop waits again: with no system call to wake it and no task queued (a client that gathers the
    /// writes of one iteration's callers into one send registers its flush here). Bodies registered by a body run in
    /// the same iteration. Loop thread only.
    public func atEndOfIteration(_ body: @escaping () -> Void) {
        assertInLoopThread()
        iterationEnd.append(body)
    }

    private func runIterationEnd() {
        while !iterationEnd.isEmpty {
            let bodies = iterationEnd
            iterationEnd.removeAll(keepingCapacity: true)
            for body in bodies { body() }
        }
    }

    /// Runs `task` on the loop (at once on its own thread), or on the calling thread when the loop has returned
    /// from `run()`: for releasing what the loop owned, which nothing else touches once it has stopped.
    func executeOrRunIfStopped(_ task: @escaping @Sendable () -> Void) {
        if inLoopThread || !enqueue(task) { task() }
    }

    /// Runs `task` now when called on the loop thread, else posts it with `execute`.
    public func executeInLoop(_ task: @escaping @Sendable () -> Void) {
        if inLoopThread { task() } else { execute(task) }
    }

    private func wakeup() {
        if !wakeupPending.exchange(true, ordering: .sequentiallyConsistent) {
            _ = sy_eventfd_write(wakeFD, 1)
        }
    }

    fileprivate func handleWakeup() {
        _ = sy_eventfd_drain(wakeFD)
        wakeupPending.store(false, ordering: .releasing)
        // The loop reads `pendingCount` and `quitRequested` next. Without a full fence that load may be served
        // before the store above is visible (a store buffer): a poster would then still see `wakeupPending` set
        // and skip the eventfd write, while the loop sees no task and sleeps with no timeout.
        atomicMemoryFence(ordering: .sequentiallyConsistent)
    }

    private func runPendingTasks() {
        if pendingCount.load(ordering: .acquiring) == 0 { return }
        let tasks = pendingTasks.withLock { q -> [@Sendable () -> Void] in
            if q.tasks.isEmpty { return [] }
            let taken = q.tasks
            q.tasks.removeAll(keepingCapacity: true)
            pendingCount.store(0, ordering: .releasing)
            return taken
        }
        if tasks.isEmpty { return }
        runningTasks = true
        for task in tasks { task() }
        runningTasks = false
    }

    // MARK: Timers

    /// Runs `task` on the loop after `delay`. Safe to call from any thread.
    @discardableResult
    public func schedule(after delay: Duration, _ task: @escaping @Sendable () -> Void) -> TimerHandle {
        scheduleTimer(delay: delay, interval: nil, task)
    }

    /// Runs `task` on the loop every `interval`, first after `interval` (or `initialDelay`). Safe from any thread.
    @discardableResult
    public func scheduleRepeating(
        every interval: Duration, initialDelay: Duration? = nil, _ task: @escaping @Sendable () -> Void
    ) -> TimerHandle {
        scheduleTimer(delay: initialDelay ?? interval, interval: interval, task)
    }

    /// Stops a timer. Safe to call from any thread; on the loop thread the timer never fires afterwards.
    public func cancel(_ handle: TimerHandle) {
        if inLoopThread {
            timers.cancel(id: handle.id)
        } else {
            execute { [self] in timers.cancel(id: handle.id) }
        }
    }

    /// Timers currently scheduled (loop thread only).
    var timerCount: Int { timers.count }

    private func scheduleTimer(delay: Duration, interval: Duration?, _ task: @escaping @Sendable () -> Void)
        -> TimerHandle
    {
        let id = nextTimerID.wrappingAdd(1, ordering: .relaxed).oldValue
        let handle = TimerHandle(id: id, loop: self)
        let delayNs = delay.nanosecondsSaturated
        let intervalNs = interval.map { max(1, $0.nanosecondsSaturated) } ?? 0
        if inLoopThread {
            // A timer scheduled from a close callback while the loop stops would never fire: released at once.
            if tasksClosed.load(ordering: .relaxed) { return handle }
            timers.schedule(id: id, deadline: sy_monotonic_ns() + delayNs, interval: intervalNs, task)
        } else {
            let requested = sy_monotonic_ns()
            execute { [self] in
                timers.schedule(id: id, deadline: requested + delayNs, interval: intervalNs, task)
            }
        }
        return handle
    }

    private func runExpiredTimers() {
        if timers.isEmpty { return }
        let now = sy_monotonic_ns()
        while let callback = timers.popExpired(now: now) {
            callback()
        }
    }

    // MARK: Pool maintenance (loop thread only)

    /// Schedules the pool's next decay and trim check.
    private func armPoolMaintenance() {
        poolMaintenanceArmed = true
        _ = scheduleTimer(delay: configuration.poolDecayInterval, interval: nil) { [unowned self] in
            poolMaintenanceArmed = false
            maintainPool()
        }
    }

    /// Frees the pooled chunks nobody needed for an interval; once the process has freed `trimThresholdBytes`
    /// since the last trim and a second has passed, returns free memory to the system.
    private func maintainPool() {
        trimPending = false
        pool.decay()
        let freed = pool.takeFreedBytes()
        let threshold = configuration.trimThresholdBytes
        guard threshold > 0 else { return }
        let total = Self.freedSinceTrim.wrappingAdd(freed, ordering: .relaxed).newValue
        guard total >= threshold else { return }
        let now = sy_monotonic_ns()
        let last = Self.lastTrim.load(ordering: .relaxed)
        guard last == 0 || now &- last >= 1_000_000_000,
              Self.lastTrim.compareExchange(expected: last, desired: now, ordering: .relaxed).exchanged else {
            trimPending = true  // too soon after the last trim (or another loop trims now): check again next time
            return
        }
        Self.freedSinceTrim.store(0, ordering: .relaxed)
        Self.trimCounter.wrappingAdd(1, ordering: .relaxed)
        _ = sy_malloc_trim()
    }

    /// Times the loops of this process asked the allocator to return free memory to the system.
    public static var mallocTrims: Int { trimCounter.load(ordering: .relaxed) }

    // MARK: Registration (loop thread only)

    /// Watches `fd` for `interest` and hands its events to `handler`. Loop thread only.
    func register(fd: Int32, interest: IOInterest, handler: EventHandler) throws {
        assertInLoopThread()
        try poller.register(fd: fd, interest: interest)
        setHandler(handler, for: fd)
    }

    private func setHandler(_ handler: EventHandler, for fd: Int32) {
        let i = Int(fd)
        if i >= handlers.count {
            handlers.append(contentsOf: repeatElement(nil, count: max(i + 1 - handlers.count, handlers.count)))
        }
        handlers[i] = handler
    }

    /// Changes what `fd` is watched for (a failure is logged). Loop thread only.
    func modify(fd: Int32, interest: IOInterest) {
        assertInLoopThread()
        do {
            try poller.modify(fd: fd, interest: interest)
        } catch {
            logger.error("poller modify failed", metadata: ["fd": "\(fd)", "error": "\(error)"])
        }
    }

    /// Stops watching `fd`; its events still in the current batch are dropped. Loop thread only, or any thread
    /// once the loop has stopped (releasing what it owned).
    func unregister(fd: Int32) {
        assertInLoopThreadOrStopped()
        if handlingBatch { retiredInBatch.append(fd) }
        poller.unregister(fd: fd)
        let i = Int(fd)
        if i < handlers.count { handlers[i] = nil }
    }

    /// Hands `fd`, registered already, to `handler` watched for `interest`: one poller change instead of an
    /// unregister and a register (a dialer's connected socket taken over by a tunnel). Loop thread only.
    func reassign(fd: Int32, interest: IOInterest, handler: EventHandler) throws {
        assertInLoopThread()
        try poller.modify(fd: fd, interest: interest)
        setHandler(handler, for: fd)
    }
}

/// Drains the loop's eventfd when another thread wakes it.
private final class WakeupHandler: EventHandler {
    let fd: Int32
    unowned let loop: EventLoop
    init(fd: Int32, loop: EventLoop) {
        self.fd = fd
        self.loop = loop
    }
    func handleEvents(_ events: UInt32) { loop.handleWakeup() }
}

/// Memory held by a loop's buffer pool.
public struct BufferStatistics: Sendable {
    /// Bytes handed out to connections (input tails and queued output).
    public var outstandingBytes: Int
    /// Bytes kept on the pool's free lists for reuse (at most the configured cap).
    public var pooledBytes: Int
}

extension EventLoop {
    /// The pool's current figures. Loop thread only.
    public var bufferStatistics: BufferStatistics {
        assertInLoopThread()
        return BufferStatistics(outstandingBytes: pool.outstandingBytes, pooledBytes: pool.pooledBytes)
    }
}

/// The tasks posted to a loop, and whether it still takes them.
private struct TaskQueue {
    var tasks: [@Sendable () -> Void] = []
    /// Set when the loop has returned from `run()`: later tasks are dropped.
    var closed = false
}
