#if canImport(Glibc)
import Glibc
#endif
import Synchronization

/// Serialized output of the chat client and, on a terminal, the line being typed.
///
/// Piped (not interactive): each line is written as it is. Interactive: the last line of the screen is the prompt
/// `> ` followed by what the user has typed so far. An incoming line clears it (`\r ESC[2K`), is printed, and the
/// prompt with the typed text is drawn again below it, so arriving messages never break the line being typed:
///
/// ```
/// [lobby #3] alice: hi        <- printed over the prompt line
/// > half a sen                <- drawn again, the cursor after it
/// ```
///
/// The typed text (a `LineEditor`) lives under the same lock as the output, so typing and printing never
/// interleave mid-line. Safe to call from any thread.
final class Console: Sendable {
    /// What typing produced.
    enum Input: Equatable {
        /// Enter was pressed on this line.
        case line(String)
        /// Ctrl-D on an empty line.
        case endOfInput
    }

    private struct State {
        var editor = LineEditor()
        /// After `close()`: output is written plain, the prompt is gone.
        var closed = false
    }

    private static let clearLine = Array("\r\u{1B}[2K".utf8)
    private static let prompt = Array("> ".utf8)

    private let interactive: Bool
    private let state = Mutex(State())

    init(interactive: Bool) { self.interactive = interactive }

    /// Prints `line` (interactive: above the prompt and the typed text).
    func show(_ line: String) {
        state.withLock { s in
            if interactive && !s.closed {
                writeOut(Self.clearLine + Array(line.utf8) + [UInt8(ascii: "\n")] + Self.prompt + s.editor.line)
            } else {
                writeOut(Array(line.utf8) + [UInt8(ascii: "\n")])
            }
        }
    }

    /// Feeds bytes typed at the terminal to the line editor and echoes their effect. Returns the lines finished
    /// with Enter, in order; `.endOfInput` comes last and the bytes after it are dropped.
    func type(_ bytes: some Sequence<UInt8>) -> [Input] {
        state.withLock { s in
            var inputs: [Input] = []
            var screen: [UInt8] = []
            typing: for byte in bytes {
                switch s.editor.feed(byte) {
                case .none:
                    break
                case .echo(let b):
                    screen.append(b)
                case .redraw:
                    screen += Self.clearLine + Self.prompt + s.editor.line
                case .submit(let line):
                    screen += Array("\n".utf8) + Self.prompt
                    inputs.append(.line(line))
                case .endOfInput:
                    inputs.append(.endOfInput)
                    break typing
                }
            }
            if !s.closed { writeOut(screen) }
            return inputs
        }
    }

    /// Clears the prompt line for good (interactive); later output is written plain. Call before the terminal's
    /// settings are restored.
    func close() {
        state.withLock { s in
            if interactive && !s.closed { writeOut(Self.clearLine) }
            s.closed = true
        }
    }

    /// Straight to descriptor 1: stdio's `fflush(NULL)` would wait for the stdin lock that the thread blocked in
    /// `readLine` holds, so output would stall until the next input line.
    private func writeOut(_ bytes: [UInt8]) {
        var offset = 0
        while offset < bytes.count {
            let n = bytes.withUnsafeBytes { write(1, $0.baseAddress! + offset, $0.count - offset) }
            if n < 0 && errno == EINTR { continue }
            if n <= 0 { return }
            offset += n
        }
    }
}
