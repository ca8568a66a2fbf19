#if canImport(Glibc)
import Glibc
#endif
import CSwitchyardLinux

/// Turns SIGINT/SIGTERM into a callback on a loop, so a service can shut down gracefully.
/// The signal handler only writes to an eventfd (async-signal-safe); the loop does the rest.
public final class TerminationSignals: @unchecked Sendable {
    // @unchecked Sendable: `handler` registration and callbacks happen on `loop` only.
    public let loop: EventLoop
    private let fd: Int32
    private let watcher: Watcher

    /// Installs the handlers; `onSignal` runs on `loop` with the signal number. Call from any thread.
    public init(loop: EventLoop, onSignal: @escaping @Sendable (Int32) -> Void) throws {
        let fd = sy_eventfd()
        if fd < 0 { throw IOError(errnoCode: errno, call: "eventfd") }
        self.fd = fd
        self.loop = loop
        self.watcher = Watcher(fd: fd, onSignal: onSignal)
        let w = UncheckedBox(watcher)
        loop.executeInLoop {
            try? loop.register(fd: fd, interest: .read, handler: w.value)
        }
        if sy_install_termination_signals(fd) != 0 { throw IOError(errnoCode: errno, call: "sigaction") }
    }

    /// Restores the default handlers.
    public func uninstall() {
        _ = sy_install_termination_signals(-1)
    }

    private final class Watcher: EventHandler {
        let fd: Int32
        let onSignal: @Sendable (Int32) -> Void
        init(fd: Int32, onSignal: @escaping @Sendable (Int32) -> Void) {
            self.fd = fd
            self.onSignal = onSignal
        }
        func handleEvents(_ events: UInt32) {
            _ = sy_eventfd_drain(fd)
            onSignal(sy_last_termination_signal())
        }
    }
}
