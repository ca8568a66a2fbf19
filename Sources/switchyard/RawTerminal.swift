#if canImport(Glibc)
import Glibc
#endif
import Synchronization

/// A terminal switched to character-at-a-time input without echo, and back.
///
/// Canonical mode and echo are off (the client edits and draws the line itself); signals stay on, so Ctrl-C still
/// interrupts, but the suspend and quit keys are disabled: a stopped or core-dumping client could not put the
/// settings back. `restore()` puts back what was there before `enter`; it may be called more than once and from
/// any thread (the signal path and the normal exit path race for it). Safe to call from any thread.
final class RawTerminal: Sendable {
    private let fd: Int32
    private let original: Mutex<termios?>

    private init(fd: Int32, original: termios) {
        self.fd = fd
        self.original = Mutex(original)
    }

    /// Switches `fd` to raw input. Nil when it is not a terminal or its settings cannot be changed.
    static func enter(fd: Int32) -> RawTerminal? {
        var settings = termios()
        guard isatty(fd) != 0, tcgetattr(fd, &settings) == 0 else { return nil }
        let original = settings
        settings.c_lflag &= ~tcflag_t(ICANON | ECHO)
        settings.c_lflag |= tcflag_t(ISIG)
        withUnsafeMutableBytes(of: &settings.c_cc) { cc in
            cc[Int(VMIN)] = 1
            cc[Int(VTIME)] = 0
            cc[Int(VSUSP)] = 0  // _POSIX_VDISABLE on Linux
            cc[Int(VQUIT)] = 0
        }
        guard tcsetattr(fd, TCSANOW, &settings) == 0 else { return nil }
        return RawTerminal(fd: fd, original: original)
    }

    /// Puts the original settings back (once; later calls do nothing).
    func restore() {
        original.withLock { saved in
            guard var settings = saved else { return }
            saved = nil
            while tcsetattr(fd, TCSANOW, &settings) != 0 && errno == EINTR {}
        }
    }
}
