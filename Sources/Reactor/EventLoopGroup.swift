#if canImport(Glibc)
import Glibc
#endif
import Synchronization
import CSwitchyardLinux

/// An acceptor loop plus N I/O loops, each on its own thread (muduo's EventLoopThreadPool).
///
/// With `ioLoops == 0` the acceptor loop does the I/O as well (one thread in all). New connections go round robin
/// over the I/O loops. Safe to use from any thread.
public final class EventLoopGroup: Sendable {
    /// The loop that accepts connections (and runs listening sockets' timers).
    public let acceptorLoop: EventLoop
    /// The loops that serve connections (the acceptor loop itself when there are none).
    public let ioLoops: [EventLoop]
    public let pollerKind: PollerKind
    private let threads: Mutex<[pthread_t]>
    private let cursor = Atomic<Int>(0)
    private let isShutDown = Atomic<Bool>(false)

    /// Starts `ioLoops` I/O threads (default: one per core) plus the acceptor thread.
    public init(ioLoops: Int = SystemInfo.coreCount, configuration: LoopConfiguration = LoopConfiguration()) throws {
        precondition(ioLoops >= 0, "ioLoops must be >= 0")
        pollerKind = configuration.poller
        let acceptor = try EventLoop(configuration: configuration, index: 0)
        var loops: [EventLoop] = []
        for i in 0..<ioLoops {
            loops.append(try EventLoop(configuration: configuration, index: i + 1))
        }
        acceptorLoop = acceptor
        self.ioLoops = loops.isEmpty ? [acceptor] : loops
        var started: [pthread_t] = []
        for loop in [acceptor] + loops {
            started.append(try Self.startThread(name: "sy-loop-\(loop.index)") { loop.run() })
        }
        threads = Mutex(started)
    }

    deinit {
        shutdown()
    }

    /// The next I/O loop, round robin.
    public func next() -> EventLoop {
        if ioLoops.count == 1 { return ioLoops[0] }
        let i = cursor.wrappingAdd(1, ordering: .relaxed).oldValue
        return ioLoops[(i & Int.max) % ioLoops.count]
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
