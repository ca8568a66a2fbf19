import Synchronization

/// Why a running statement was cancelled.
enum CancelReason: Sendable, Equatable {
    /// Its timeout passed.
    case timeout(Duration)
    /// The caller cancelled its stream.
    case caller
}

/// The per-connection bookkeeping that makes a cancel hit the statement it was meant for and no other.
///
/// Each statement (or stream) gets a generation number when it starts on the worker thread. A cancel names the
/// generation; it is sent to the server only while that generation still runs, and under the guard's lock, which
/// the worker needs to end the statement: the next statement cannot start before the cancel was delivered, so a
/// late cancel (its timer fired as the statement ended) is dropped, and one in flight reaches only the statement
/// it names (SQLite resets its interrupt flag when the next statement starts; PostgreSQL ignores a cancel between
/// statements; MariaDB clears `KILL QUERY` when the next command arrives).
///
/// The same rules make a cancel that comes too early a no-op: one sent after ``begin(timeout:)`` but before the
/// server started the statement (the worker thread was descheduled in between) is cleared or ignored, and the
/// statement would then run to its end. So a cancel is sent again every ``resendInterval`` while its statement
/// still runs.
///
/// Safe to call from any thread.
final class StatementGuard: Sendable {
    private struct State {
        var generation: UInt64 = 0
        var running = false
        var cancelled: CancelReason?
        /// The timeout's timer, then (once cancelled) the timer that sends the cancel again.
        var timer: UInt64?
        /// Cancels sent to the server (tests read it through ``cancelsSent``).
        var cancelsSent = 0
    }

    private let state = Mutex(State())
    private let canceller: (any DriverCanceller)?
    /// How long a cancelled statement may keep running before the cancel is sent again.
    let resendInterval: Duration

    init(canceller: (any DriverCanceller)?, resendInterval: Duration = .seconds(1)) {
        self.canceller = canceller
        self.resendInterval = resendInterval
    }

    /// Worker thread: a statement starts; with a timeout, the shared timer will cancel it when it runs that long.
    /// The cancel comes `grace` after the timeout (its reason still names the timeout).
    func begin(timeout: Duration?, grace: Duration = .zero) -> UInt64 {
        let generation = state.withLock { s -> UInt64 in
            s.generation += 1
            s.running = true
            s.cancelled = nil
            return s.generation
        }
        if let timeout {
            let id = StatementTimer.shared.schedule(after: timeout + grace) { [weak self] in
                self?.cancel(generation, reason: .timeout(timeout))
            }
            let stale = state.withLock { s -> Bool in
                guard s.generation == generation, s.running else { return true }
                s.timer = id
                return false
            }
            if stale { StatementTimer.shared.cancel(id) }
        }
        return generation
    }

    /// Worker thread: the statement of `generation` ended. Returns why it was cancelled, if it was.
    @discardableResult
    func end(_ generation: UInt64) -> CancelReason? {
        let (reason, timer) = state.withLock { s -> (CancelReason?, UInt64?) in
            guard s.generation == generation else { return (nil, nil) }
            s.running = false
            defer { s.timer = nil }
            return (s.cancelled, s.timer)
        }
        if let timer { StatementTimer.shared.cancel(timer) }
        return reason
    }

    /// Any thread: cancels the statement of `generation` on the server if it still runs and was not cancelled
    /// yet. Returns `true` when this call sent the cancel. While the statement keeps running, the cancel is sent
    /// again every ``resendInterval``.
    @discardableResult
    func cancel(_ generation: UInt64, reason: CancelReason) -> Bool {
        let sent = state.withLock { s -> Bool in
            guard s.running, s.generation == generation, s.cancelled == nil else { return false }
            s.cancelled = reason
            deliver(&s)
            return true
        }
        if sent { scheduleResend(generation) }
        return sent
    }

    /// Under the lock on purpose: the worker cannot end this statement and start the next one before the cancel is
    /// delivered (see the type's comment), nor close the connection under `abort`.
    private func deliver(_ s: inout State) {
        s.cancelsSent += 1
        if let canceller, !canceller.cancel() { canceller.abort() }
    }

    private func scheduleResend(_ generation: UInt64) {
        guard canceller != nil else { return }
        let id = StatementTimer.shared.schedule(after: resendInterval) { [weak self] in self?.resend(generation) }
        let stale = state.withLock { s -> Bool in
            guard s.running, s.generation == generation else { return true }
            if let timer = s.timer, timer != id { StatementTimer.shared.cancel(timer) }
            s.timer = id
            return false
        }
        if stale { StatementTimer.shared.cancel(id) }
    }

    /// The cancel of `generation` went out a ``resendInterval`` ago and the statement still runs: send it again.
    private func resend(_ generation: UInt64) {
        let sent = state.withLock { s -> Bool in
            guard s.running, s.generation == generation, s.cancelled != nil else { return false }
            s.timer = nil
            deliver(&s)
            return true
        }
        if sent { scheduleResend(generation) }
    }

    /// Why the statement of `generation` was cancelled (nil: it was not, or another one runs now).
    func cancelReason(_ generation: UInt64) -> CancelReason? {
        state.withLock { s in s.generation == generation ? s.cancelled : nil }
    }

    /// The generation running now, or `nil` between statements.
    var runningGeneration: UInt64? { state.withLock { s in s.running ? s.generation : nil } }

    /// Cancels sent to the server since the connection opened.
    var cancelsSent: Int { state.withLock { $0.cancelsSent } }
}
