#if canImport(Glibc)
import Glibc
#endif
import CSwitchyardLinux
import Synchronization

/// Turns SIGINT/SIGTERM into a callback on a loop, so a service can shut down gracefully.
/// The signal handler only writes to an eventfd (async-signal-safe); the loop does the rest.
///
/// Several may be installed at once (up to `SY_TERMINATION_SLOTS`, on one loop or several): a signal reaches every
/// one of them. Uninstalling one leaves the others working; the default handlers come back when the last one goes.
public final class TerminationSignals: @unchecked Sendable {
    // @unchecked Sendable: `handler` registration and callbacks happen on `loop` only.
    public let loop: EventLoop
    private let fd: Int32
    /// Registered on `loop`, and handling the descriptor's events there.
    private let watcher: LoopBound<Watcher>
    private let installed = Atomic<Bool>(true)

    /// Installs the handlers (adds this one to those already installed); `onSignal` runs on `loop` with the signal
    /// number. Safe to call from any thread.
    public init(loop: EventLoop, onSignal: @escaping @Sendable (Int32) -> Void) throws {
        let fd = sy_eventfd()
        if fd < 0 { throw IOError(errnoCode: errno, call: "eventfd") }
        self.fd = fd
        self.loop = loop
        let watcher = LoopBound(Watcher(fd: fd, onSignal: onSignal), loop: loop)
        self.watcher = watcher
        let logger = loop.logger
        loop.executeInLoop {
            do {
                try loop.register(fd: fd, interest: .read, handler: watcher.value)
            } catch {
                logger.error("cannot watch for termination signals", metadata: ["error": "\(error)"])
            }
        }
        if sy_termination_signals_add(fd) != 0 {
            let error = IOError(errnoCode: errno, call: "sigaction")
            installed.store(false, ordering: .relaxed)
            Self.release(fd: fd, loop: loop)
            throw error
        }
    }

    /// Stops this one receiving the signals and closes its descriptor; the default handlers come back when no
    /// other is installed. Idempotent. Safe to call from any thread.
    public func uninstall() {
        guard installed.exchange(false, ordering: .acquiringAndReleasing) else { return }
        // Once this returns the handler no longer writes to `fd`, so closing it cannot hit a reused number.
        _ = sy_termination_signals_remove(fd)
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
