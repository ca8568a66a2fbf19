#if canImport(Glibc)
import Glibc
#endif
import Synchronization

/// Runs blocking work (joining loop threads, waiting for connections to drain) from async code on a thread of its
/// own, so no thread of Swift's cooperative pool is held while it waits. Returns what `body` returns. When no thread
/// can be started, `body` runs on the calling thread. Safe to call from any task.
public func runOnDedicatedThread<T: Sendable>(name: String, _ body: @escaping @Sendable () -> T) async -> T {
    let job = Job(body)
    return await withCheckedContinuation { (continuation: CheckedContinuation<T, Never>) in
        do {
            let thread = try EventLoopGroup.startThread(name: name) {
                continuation.resume(returning: job.run())
            }
            pthread_detach(thread)
        } catch {
            continuation.resume(returning: job.run())
        }
    }
}

/// The work of `runOnDedicatedThread`, released as soon as it has run: what it captured (a group, a server) is not
/// kept alive by the finishing thread after the caller has resumed.
private final class Job<T: Sendable>: Sendable {
    private let body: Mutex<(@Sendable () -> T)?>

    init(_ body: @escaping @Sendable () -> T) { self.body = Mutex(body) }

    func run() -> T {
        let work = body.withLock { b -> (@Sendable () -> T) in
            defer { b = nil }
            return b!
        }
        return work()
    }
}

extension TCPServer {
    /// Stops accepting, closes the connections gracefully (each flushes what it has queued) and waits for them,
    /// up to `timeout`, then closes those left. The async form of `shutdown(timeout:)`: it waits on a thread of its
    /// own, not on the caller's. Not on a loop thread.
    public func shutdown(timeout: Duration = .seconds(5)) async {
        await runOnDedicatedThread(name: "sy-srv-stop") { self.shutdown(timeout: timeout) }
    }
}

extension EventLoopGroup {
    /// Stops every loop and joins their threads: the async form of `shutdown()`, waiting on a thread of its own.
    /// Not on one of the group's loops.
    public func shutdown() async {
        await runOnDedicatedThread(name: "sy-group-stop") { self.shutdown() }
    }
}
