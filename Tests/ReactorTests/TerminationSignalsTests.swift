import Reactor
import Testing
import TestSupport

#if canImport(Glibc)
import Glibc
#endif

// Each scenario raises SIGTERM at its own process, so it runs in an exit test's child: a mistake (a handler that is
// gone too early) kills the child, never the test runner.
@Suite("Termination signals: several at once")
struct TerminationSignalsTests {
    @Test("two TerminationSignals on two loops both get a SIGTERM; after one uninstalls, the other still does",
          arguments: PollerKind.allCases)
    func twoInstalledBothReceive(poller: PollerKind) async {
        await #expect(processExitsWith: .success) { [name = poller.rawValue as String] in
            try twoInstalledScenario(poller: PollerKind(rawValue: name)!)
        }
    }

    @Test("the default action comes back only when the last one uninstalls", arguments: PollerKind.allCases)
    func defaultComesBackAfterTheLast(poller: PollerKind) async {
        await #expect(processExitsWith: .signal(SIGTERM)) { [name = poller.rawValue as String] in
            try lastUninstallScenario(poller: PollerKind(rawValue: name)!)
        }
    }
}

/// A loop of its own (one thread) with a TerminationSignals that counts the SIGTERMs it gets.
private struct Receiver {
    let group: EventLoopGroup
    let signals: TerminationSignals
    let received = EventCounter()

    init(poller: PollerKind) throws {
        group = try EventLoopGroup(ioLoops: 0, configuration: LoopConfiguration(poller: poller),
                                   placement: .roundRobin)
        let received = self.received
        let loop = group.acceptorLoop
        signals = try TerminationSignals(loop: loop) { signo in
            if signo == SIGTERM && loop.inLoopThread { received.signal() }
        }
    }
}

private func require(_ condition: Bool, _ message: String) throws {
    if !condition { throw TestFailure(message) }
}

/// Runs in the exit test's child process.
private func twoInstalledScenario(poller: PollerKind) throws {
    let a = try Receiver(poller: poller)
    let b = try Receiver(poller: poller)
    defer {
        a.group.shutdown()
        b.group.shutdown()
    }
    try require(a.group.acceptorLoop !== b.group.acceptorLoop, "two loops")

    kill(getpid(), SIGTERM)
    try require(a.received.wait(for: 1), "the first one did not get the signal: the second replaced it")
    try require(b.received.wait(for: 1), "the second one did not get the signal")

    a.signals.uninstall()
    kill(getpid(), SIGTERM)
    try require(b.received.wait(for: 2), "uninstalling the first one disabled the second")
    // The first one's descriptor left the table before the second signal, so the handler never wrote to it.
    try require(a.received.count == 1, "the uninstalled one still got the signal: \(a.received.count)")

    // Uninstalling one twice removes nothing else.
    a.signals.uninstall()
    kill(getpid(), SIGTERM)
    try require(b.received.wait(for: 3), "a second uninstall of the first one disabled the second")
    b.signals.uninstall()
}

/// Runs in the exit test's child process; ends killed by SIGTERM when the default action is back.
private func lastUninstallScenario(poller: PollerKind) throws {
    let a = try Receiver(poller: poller)
    let b = try Receiver(poller: poller)
    a.signals.uninstall()
    kill(getpid(), SIGTERM)
    try require(b.received.wait(for: 1), "the remaining one did not get the signal")
    b.signals.uninstall()
    // The default action again: the process ends here.
    kill(getpid(), SIGTERM)
    // A pending SIGTERM is delivered before kill returns when it targets the calling thread; another thread may
    // take it a moment later. Wait for it, at most 10 s, without ever exiting normally.
    _ = EventCounter().wait(for: 1, timeout: 10)
    throw TestFailure("SIGTERM did not end the process after the last uninstall")
}
