import Dispatch
import Foundation
import Reactor
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

// Waiting for what another thread (a loop, a server, a child process) does: counters to wait on, shared values,
// polling with a deadline, and time limits for async operations.

/// How many times longer than written every wait of this file may last: 1, or `SWITCHYARD_TEST_TIME_SCALE`
/// (`scripts/test --sanitize` sets it: TSan and ASan slow a test down several times). Only deadlines scale: a wait
/// still ends as soon as its condition holds.
public let testTimeScale: Double = {
    guard let text = ProcessInfo.processInfo.environment["SWITCHYARD_TEST_TIME_SCALE"], let scale = Double(text),
          scale >= 1 else { return 1 }
    return scale
}()

/// Counts events and lets a test wait for a number of them (no sleeps).
public final class EventCounter: Sendable {
    private let state = Mutex<Int>(0)
    private let semaphore = DispatchSemaphore(value: 0)

    public init() {}

    public func signal() {
        state.withLock { $0 += 1 }
        semaphore.signal()
    }

    public var count: Int { state.withLock { $0 } }

    /// Waits until `n` events have been signalled in all; false on timeout.
    public func wait(for n: Int, timeout: Double = 10) -> Bool {
        let deadline = DispatchTime.now() + timeout * testTimeScale
        while count < n {
            if semaphore.wait(timeout: deadline) == .timedOut { return count >= n }
        }
        return true
    }
}

/// A value shared between loop callbacks (or other threads) and the test.
public final class Shared<T: Sendable>: Sendable {
    private let value: Mutex<T>
    public init(_ v: T) { value = Mutex(v) }
    public func get() -> T { value.withLock { $0 } }
    public func set(_ v: T) { value.withLock { $0 = v } }
    @discardableResult
    public func update<R>(_ f: (inout T) -> R) -> R { value.withLock { f(&$0) } }
}

/// Runs `body` on `loop` and returns its result; the calling thread waits, at most 10 s (then this throws, so a
/// stuck loop fails the test instead of hanging it).
public func onLoop<T: Sendable>(_ loop: EventLoop, _ body: @escaping @Sendable () -> T) throws -> T {
    let result = Shared<T?>(nil)
    let done = DispatchSemaphore(value: 0)
    loop.execute {
        result.set(body())
        done.signal()
    }
    guard done.wait(timeout: .now() + 10 * testTimeScale) == .success else { throw TestFailure("loop did not run the task") }
    return result.get()!
}

/// Polls an observable condition until it holds (each check is cheap), failing after `timeout` seconds.
/// `interval` is the pause between checks, in microseconds.
public func eventually(timeout: Double = 10, interval: useconds_t = 2000, _ condition: () throws -> Bool) rethrows
    -> Bool
{
    let deadline = Date().addingTimeInterval(timeout * testTimeScale)
    while Date() < deadline {
        if try condition() { return true }
        usleep(interval)
    }
    return try condition()
}

/// The same for async code: polls `condition` every 10 ms until it holds or `timeout` passes; returns whether it
/// held. The one `eventually` of the async tests (`#expect(try await eventually { ... })`).
public func eventually(timeout: Duration = .seconds(10), _ condition: () async throws -> Bool) async rethrows -> Bool {
    let deadline = ContinuousClock.now + timeout * testTimeScale
    while ContinuousClock.now < deadline {
        if try await condition() { return true }
        try? await Task.sleep(for: .milliseconds(10))
    }
    return try await condition()
}

/// A fresh loop group with the given poller, shut down when `body` returns. Every loop serves by default
/// (round-robin placement), so cross-loop paths stay covered.
public func withGroup<R>(poller: PollerKind, ioLoops: Int = 2, placement: LoopPlacement = .roundRobin,
                         _ body: (EventLoopGroup) throws -> R) throws -> R {
    let group = try EventLoopGroup(ioLoops: ioLoops, configuration: LoopConfiguration(poller: poller),
                                   placement: placement)
    defer { group.shutdown() }
    return try body(group)
}

/// An async operation that did not finish in time.
public struct TimedOut: Error, CustomStringConvertible {
    public let what: String
    public let seconds: Double?
    public init(what: String, seconds: Double? = nil) {
        self.what = what
        self.seconds = seconds
    }
    public var description: String {
        if let seconds { return "timed out after \(seconds) s: \(what)" }
        return "timed out: \(what)"
    }
}

/// Times out an async operation: the test fails with `TimedOut` instead of hanging. The operation is cancelled on
/// timeout, and the caller resumes at once even if the operation ignores the cancellation.
public func withTimeout<T: Sendable>(
    _ seconds: Double, _ what: String = "operation", _ operation: @escaping @Sendable () async throws -> T
) async throws -> T {
    let race = TimeoutRace<T>()
    return try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<T, Error>) in
        race.begin(continuation)
        let work = Task {
            do { race.finish(.success(try await operation())) } catch { race.finish(.failure(error)) }
        }
        let timer = Task {
            try? await Task.sleep(for: .milliseconds(Int(seconds * testTimeScale * 1000)))
            if !Task.isCancelled { race.finish(.failure(TimedOut(what: what, seconds: seconds))) }
        }
        race.setTasks([work, timer])
    }
}

/// The operation and the timer of `withTimeout`: whichever finishes first resumes the caller and cancels the other.
final class TimeoutRace<T: Sendable>: Sendable {
    private struct State {
        var continuation: CheckedContinuation<T, Error>?
        var finished = false
        var tasks: [Task<Void, Never>] = []
    }
    private let state = Mutex(State())

    func begin(_ continuation: CheckedContinuation<T, Error>) { state.withLock { $0.continuation = continuation } }

    func setTasks(_ tasks: [Task<Void, Never>]) {
        let finished = state.withLock { s -> Bool in
            s.tasks = tasks
            return s.finished
        }
        if finished { for t in tasks { t.cancel() } }
    }

    func finish(_ result: Result<T, Error>) {
        let (continuation, tasks) = state.withLock { s -> (CheckedContinuation<T, Error>?, [Task<Void, Never>]) in
            if s.finished { return (nil, []) }
            s.finished = true
            defer { s.continuation = nil }
            return (s.continuation, s.tasks)
        }
        guard let continuation else { return }
        for t in tasks { t.cancel() }
        continuation.resume(with: result)
    }
}
