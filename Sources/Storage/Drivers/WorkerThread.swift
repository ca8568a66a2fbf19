import Dispatch
import Foundation
import Synchronization

/// A dedicated thread that runs blocking driver calls one after another, so that no caller's thread (and never
/// a reactor loop) waits on the database. Each connection owns one.
///
/// Safe to call from any thread.
final class WorkerThread: Sendable {
    private struct State {
        var jobs: [@Sendable () -> Void] = []
        var head = 0
        var stopping = false
    }

    private let state = Mutex(State())
    private let wakeup = DispatchSemaphore(value: 0)

    /// Starts the thread.
    init(name: String) {
        let thread = Thread { [self] in self.runLoop() }
        thread.name = name
        thread.stackSize = 1 << 20
        thread.start()
    }

    /// Queues a job; returns `false` when the thread is stopping and the job will not run.
    @discardableResult
    func submit(_ job: @escaping @Sendable () -> Void) -> Bool {
        let accepted = state.withLock { state -> Bool in
            guard !state.stopping else { return false }
            state.jobs.append(job)
            return true
        }
        if accepted { wakeup.signal() }
        return accepted
    }

    /// Lets the queued jobs run, then ends the thread. Later submissions are refused.
    func stop() {
        state.withLock { $0.stopping = true }
        wakeup.signal()
    }

    private func runLoop() {
        while true {
            wakeup.wait()
            while true {
                let next = state.withLock { state -> (@Sendable () -> Void)? in
                    guard state.head < state.jobs.count else {
                        state.jobs.removeAll(keepingCapacity: true)
                        state.head = 0
                        return nil
                    }
                    let job = state.jobs[state.head]
                    state.head += 1
                    return job
                }
                guard let next else { break }
                next()
            }
            if state.withLock({ $0.stopping && $0.head >= $0.jobs.count }) { return }
        }
    }
}
