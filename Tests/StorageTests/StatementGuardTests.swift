import Synchronization
@testable import Storage
import Testing
import TestSupport

/// A canceller that counts its calls; its cancel succeeds or fails as told.
final class CountingCanceller: DriverCanceller {
    let delivers: Bool
    private let counts = Mutex((cancels: 0, aborts: 0))
    init(delivers: Bool) { self.delivers = delivers }
    func cancel() -> Bool {
        counts.withLock { $0.cancels += 1 }
        return delivers
    }
    func abort() { counts.withLock { $0.aborts += 1 } }
    var cancels: Int { counts.withLock { $0.cancels } }
    var aborts: Int { counts.withLock { $0.aborts } }
}

/// The generation bookkeeping of statement cancels, without a database.
@Suite struct StatementGuardTests {
    @Test func aCancelReachesOnlyTheRunningGenerationOnce() {
        let canceller = CountingCanceller(delivers: true)
        let statementGuard = StatementGuard(canceller: canceller)
        let first = statementGuard.begin(timeout: nil)
        #expect(statementGuard.cancel(first, reason: .timeout(.milliseconds(5))))
        #expect(!statementGuard.cancel(first, reason: .caller))  // once per statement
        #expect(statementGuard.end(first) == .timeout(.milliseconds(5)))
        #expect(!statementGuard.cancel(first, reason: .caller))  // ended: a late cancel is dropped
        let second = statementGuard.begin(timeout: nil)
        #expect(!statementGuard.cancel(first, reason: .caller))  // the next statement is not hit
        #expect(statementGuard.end(second) == nil)
        #expect(canceller.cancels == 1 && canceller.aborts == 0)
        #expect(statementGuard.cancelsSent == 1)
    }

    @Test func aCancelThatCannotBeDeliveredShutsTheConnectionDown() {
        let canceller = CountingCanceller(delivers: false)
        let statementGuard = StatementGuard(canceller: canceller)
        let generation = statementGuard.begin(timeout: nil)
        #expect(statementGuard.cancel(generation, reason: .timeout(.seconds(1))))
        #expect(canceller.cancels == 1 && canceller.aborts == 1)
        statementGuard.end(generation)
    }

    @Test func anyTimeoutIsAccepted() {
        let statementGuard = StatementGuard(canceller: CountingCanceller(delivers: true))
        for timeout: Duration in [.seconds(Int64.max), .seconds(Int64.min), .zero, .nanoseconds(1)] {
            let generation = statementGuard.begin(timeout: timeout)
            statementGuard.end(generation)
        }
        #expect(statementGuard.runningGeneration == nil)
    }

    @Test func theTimerCancelsAStatementThatRunsPastItsTimeout() async {
        let canceller = CountingCanceller(delivers: true)
        // No resend within the test (a loaded machine may take seconds to get here): the timer's cancel only.
        let statementGuard = StatementGuard(canceller: canceller, resendInterval: .seconds(3600))
        // 500 ms: ended at once, even on a loaded machine, before its timer could fire.
        let quick = statementGuard.begin(timeout: .milliseconds(500))
        #expect(statementGuard.end(quick) == nil)
        let slow = statementGuard.begin(timeout: .milliseconds(20))
        #expect(await eventually { canceller.cancels == 1 })
        #expect(statementGuard.end(slow) == .timeout(.milliseconds(20)))
        // The quick statement's timer was disarmed: it never fires, also not past its deadline.
        try? await Task.sleep(for: .milliseconds(700))
        #expect(canceller.cancels == 1)
    }

    @Test func aCancelIsSentAgainWhileItsStatementKeepsRunning() async {
        // A cancel that reached the server before the statement did is lost there; the guard sends it again.
        let canceller = CountingCanceller(delivers: true)
        let statementGuard = StatementGuard(canceller: canceller, resendInterval: .milliseconds(20))
        let generation = statementGuard.begin(timeout: nil)
        #expect(statementGuard.cancel(generation, reason: .caller))
        #expect(await eventually { canceller.cancels >= 3 })
        #expect(statementGuard.end(generation) == .caller)
        let ended = canceller.cancels
        #expect(statementGuard.cancelsSent == ended)
        // Ended: no more resends, also not later; the next statement is not hit.
        let next = statementGuard.begin(timeout: nil)
        try? await Task.sleep(for: .milliseconds(100))
        #expect(canceller.cancels == ended && canceller.aborts == 0)
        #expect(statementGuard.end(next) == nil)
    }
}
