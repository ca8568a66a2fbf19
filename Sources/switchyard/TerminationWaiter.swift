import Dispatch
import Logging
import Reactor

// Transitional: the commands not yet run in a ServiceGroup (see ServiceRunner.swift) wait for signals here.

/// Blocks the calling thread until SIGINT or SIGTERM.
func waitForTermination(group: EventLoopGroup, logger: Logger) throws {
    try TerminationWaiter(group: group, logger: logger).wait()
}

/// SIGINT/SIGTERM handlers installed at once (create it before the service starts accepting or announces itself);
/// `wait()` blocks until one of the signals arrives, then restores the default handlers.
struct TerminationWaiter {
    private let done = DispatchSemaphore(value: 0)
    private let signals: TerminationSignals

    init(group: EventLoopGroup, logger: Logger) throws {
        let done = self.done
        signals = try TerminationSignals(loop: group.acceptorLoop) { signo in
            logger.info("signal received, shutting down", metadata: ["signal": "\(signo)"])
            done.signal()
        }
    }

    func wait() {
        done.wait()
        signals.uninstall()
    }
}
