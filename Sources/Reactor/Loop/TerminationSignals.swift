#if canImport(Glibc)
import Glibc
#endif
import CSwitchyardLinux
import Synchronization

/// Turns SIGINT/SIGTERM into a callback on a loop, so a service can shut down gracefully.
/// The signal handler only writes to an eventfd (async-signal-safe); the loop does the rest.
public final class TerminationSignals: @unchecked Sendable {
    // @unchecked Sendable: `handler` registration and callbacks happen on `loop` only.
    public let loop: EventLoop
    private let fd: Int32
    /// Registered on `loop`, and handling the descriptor's events there.
    private let watcher: LoopBound<Watcher>
    private let installed = Atomic<Bool>(true)

    /// Installs the handlers; `onSignal` runs on `loop` with the signal number. Call from any thread.
    public init(loop: EventLoop, onSignal: @escaping @Sendable (Int32) -> Void) throws {
        let fd = sy_eventfd()
        if fd < 0 { throw IOError(errnoCode: errno, call: "eventfd") }
        self.fd = fd
        self.loop = loop
        let watcher = LoopBound(Watcher(fd: fd, onSignal: onSignal), loop: loop)
        self.watcher = watcher
        let logger = loop.configuration.logger
        loop.executeInLoop {
            do {
                try loop.register(fd: fd, interest: .read, handler: watcher.value)
            } catch {
                logger.error("cannot watch for termination signals", metadata: ["error": "\(error)"])
            }
        }
        if sy_install_termination_signals(fd) != 0 {
            let error = IOError(errnoCode: errno, call: "sigaction")
            installed.store(false, ordering: .relaxed)
            Self.release(fd: fd, loop: loop)
            throw error
        }
    }

    /// Restores the default handlers and closes the descriptor they wrote to. Idempotent.
    public func uninstall() {
        guard installed.exchange(false, ordering: .acquiringAndReleasing) else { return }
        _ = sy_install_termination_signals(-1)
        Self.release(fd: fd, loop: loop)
    }

    /// Unregisters and closes `fd` on `loop`, or here when the loop has stopped.
    private static func release(fd: Int32, loop: EventLoop) {
        loop.executeOrRunIfStopped {
            loop.unregister(fd: fd)
            Posix.close(fd)
        }
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
