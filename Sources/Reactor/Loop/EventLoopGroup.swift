#if canImport(Glibc)
import Glibc
#endif
import CSwitchyardLinux
import Logging
import Synchronization

/// An acceptor loop plus N I/O loops, each on its own thread (muduo's EventLoopThreadPool).
///
/// With `ioLoops == 0` the acceptor loop does the I/O as well (one thread in all). Servers' new connections go to
/// the I/O loops by the group's `LoopPlacement`; `next()` hands out loops round robin. Safe to use from any thread.
public final class EventLoopGroup: Sendable {
    /// The loop that accepts connections (and runs listening sockets' timers).
    public let acceptorLoop: EventLoop
    /// The loops that serve connections (the acceptor loop itself when there are none).
    public let ioLoops: [EventLoop]
    public let pollerKind: PollerKind
    private let threads: Mutex<[pthread_t]>
    private let cursor = Atomic<Int>(0)
    private let isShutDown = Atomic<Bool>(false)
    /// How servers' new connections are spread over `ioLoops`.
    public let placement: LoopPlacement
    /// I/O loops that take new server connections (the first N of `ioLoops`).
    private let active: Atomic<Int>
    private let logger: Logger

    /// Starts `ioLoops` I/O threads (default: one per core) plus the acceptor thread. `placement` decides which
    /// loop serves a server's new connection (default `.adaptive`; `.roundRobin` is muduo's rule). Every loop logs
    /// to `logger` (poller failures, placement changes).
    public init(
        ioLoops: Int = SystemInfo.coreCount, configuration: LoopConfiguration = LoopConfiguration(),
        placement: LoopPlacement = .adaptive,
        logger: Logger = Logger(label: "switchyard.reactor", factory: { _ in SwiftLogNoOpLogHandler() })
    ) throws {
        precondition(ioLoops >= 0, "ioLoops must be >= 0")
        pollerKind = configuration.poller
        self.placement = placement
        self.logger = logger
        active = Atomic(max(1, ioLoops))
        let acceptor = try EventLoop(configuration: configuration, index: 0, logger: logger)
        var loops: [EventLoop] = []
        for i in 0..<ioLoops {
            loops.append(try EventLoop(configuration: configuration, index: i + 1, logger: logger))
        }
        acceptorLoop = acceptor
        self.ioLoops = loops.isEmpty ? [acceptor] : loops
        var started: [pthread_t] = []
        for loop in [acceptor] + loops {
            do {
                started.append(try Self.startThread(name: "sy-loop-\(loop.index)") { loop.run() })
            } catch {
                // No thread is left running a loop nobody can stop.
                for loop in [acceptor] + loops { loop.stop() }
                for t in started { pthread_join(t, nil) }
                throw error
            }
        }
        threads = Mutex(started)
        if case .adaptive = placement.kind, self.ioLoops.count > 1 {
            _ = placement.freeCores()  // the baseline the first measurement counts from
            acceptor.scheduleRepeating(every: placement.interval) { [weak self] in self?.refreshPlacement() }
        }
    }

    deinit {
        if allLoops.contains(where: { $0.inLoopThread }) {
            // The last reference went away on one of the group's own loops (the placement timer holds the group
            // for a moment): a thread cannot join itself, so stop the loops and let their threads end on their own.
            if isShutDown.exchange(true, ordering: .acquiringAndReleasing) { return }
            for loop in allLoops { loop.stop() }
            threads.withLock { t in
                for thread in t { pthread_detach(thread) }
                t.removeAll()
            }
            return
        }
        shutdown()
    }

    /// The next I/O loop, round robin.
    public func next() -> EventLoop {
        if ioLoops.count == 1 { return ioLoops[0] }
        let i = cursor.wrappingAdd(1, ordering: .relaxed).oldValue
        return ioLoops[(i & Int.max) % ioLoops.count]
    }

    /// I/O loops that take new server connections now (all of them with `.roundRobin`).
    public var activeLoopCount: Int { active.load(ordering: .relaxed) }

    /// The loop for a server's new connection, counted in its `placedConnections` (the server uncounts it when
    /// the connection closes). Round robin, or with `.adaptive` the least loaded of the active loops.
    func placeConnection() -> EventLoop {
        let loop: EventLoop
        if case .adaptive = placement.kind, ioLoops.count > 1 {
            let n = min(active.load(ordering: .relaxed), ioLoops.count)
            var best = ioLoops[0]
            var fewest = best.placedConnections.load(ordering: .relaxed)
            for candidate in ioLoops[1..<n] {
                let count = candidate.placedConnections.load(ordering: .relaxed)
                if count < fewest {
                    best = candidate
                    fewest = count
                }
            }
            loop = best
        } else {
            loop = next()
        }
        loop.placedConnections.wrappingAdd(1, ordering: .relaxed)
        return loop
    }

    /// Measures the free cores (since the previous measurement) and sets how many loops take new connections.
    /// The acceptor loop does this every `placement.interval`; call it to measure now. Safe from any thread.
    public func refreshPlacement() {
        guard case .adaptive = placement.kind, ioLoops.count > 1, let free = placement.freeCores() else { return }
        let n = LoopPlacement.activeLoops(
            freeCores: free, loopCount: ioLoops.count, current: active.load(ordering: .relaxed))
        if active.exchange(n, ordering: .relaxed) != n {
            logger.info("placement changed", metadata: [
                "active.loops": "\(n)", "loops": "\(ioLoops.count)", "free.cores": "\((free * 10).rounded() / 10)",
            ])
        }
    }

    /// Posts `task` to every I/O loop.
    public func executeOnAll(_ task: @escaping @Sendable (EventLoop) -> Void) {
        for loop in ioLoops { loop.execute { task(loop) } }
    }

    /// Every loop of the group, acceptor first, without duplicates.
    public var allLoops: [EventLoop] {
        ioLoops.first === acceptorLoop ? ioLoops : [acceptorLoop] + ioLoops
    }

    /// Stops every loop and joins their threads. Idempotent. Must not be called from one of the group's loops.
    public func shutdown() {
        if isShutDown.exchange(true, ordering: .acquiringAndReleasing) { return }
        precondition(!allLoops.contains { $0.inLoopThread }, "EventLoopGroup.shutdown() called on one of its loops")
        for loop in allLoops { loop.stop() }
        let toJoin = threads.withLock { t -> [pthread_t] in
            defer { t.removeAll() }
            return t
        }
        for t in toJoin { pthread_join(t, nil) }
    }

    private final class ThreadBody {
        let body: () -> Void
        init(_ body: @escaping () -> Void) { self.body = body }
    }

    static func startThread(name: String, _ body: @escaping () -> Void) throws -> pthread_t {
        let box = Unmanaged.passRetained(ThreadBody(body)).toOpaque()
        var thread = pthread_t()
        let r = pthread_create(&thread, nil, { arg in
            let box = Unmanaged<ThreadBody>.fromOpaque(arg!).takeRetainedValue()
            box.body()
            return nil
        }, box)
        if r != 0 {
            Unmanaged<ThreadBody>.fromOpaque(box).release()
            throw IOError(errnoCode: r, call: "pthread_create")
        }
        sy_set_thread_name(thread, String(name.prefix(15)))
        return thread
    }
}
