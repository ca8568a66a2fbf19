/// The line being typed at a terminal in raw mode, and what each input byte does to it. A plain state machine:
/// bytes in, actions out, no I/O.
///
/// Printable bytes (UTF-8 included) are appended; Backspace (0x7F or 0x08) removes the last character (a whole
/// UTF-8 sequence); Ctrl-U empties the line; CR or LF submits it; Ctrl-D on an empty line ends the input. Escape
/// sequences (arrow and function keys: `ESC [ ... final`, `ESC O x`) and other control bytes are dropped.
struct LineEditor {
    /// What the screen has to do after a byte.
    enum Action: Equatable {
        /// Nothing changed.
        case none
        /// The byte was appended; write it as it is.
        case echo(UInt8)
        /// The line changed before its end; draw it again.
        case redraw
        /// Enter: this line is done, the editor is empty again.
        case submit(String)
        /// Ctrl-D on an empty line.
        case endOfInput
    }

    private enum Escape {
        case none
        /// After ESC.
        case started
        /// Inside `ESC [`, up to the final byte (0x40...0x7E).
        case controlSequence
        /// After `ESC O`: one more byte.
        case singleShift
    }

    /// The bytes typed so far (UTF-8, possibly ending inside a character still being typed).
    private(set) var line: [UInt8] = []
    private var escape = Escape.none

    /// The line as text (an unfinished character shows as U+FFFD).
    var text: String { String(decoding: line, as: UTF8.self) }

    mutating func feed(_ byte: UInt8) -> Action {
        switch escape {
        case .none:
            break
        case .started:
            escape = byte == UInt8(ascii: "[") ? .controlSequence : byte == UInt8(ascii: "O") ? .singleShift : .none
            return .none
        case .controlSequence:
            if (0x40...0x7E).contains(byte) { escape = .none }
            return .none
        case .singleShift:
            escape = .none
            return .none
        }
        switch byte {
        case 0x1B:
            escape = .started
            return .none
        case 0x0D, 0x0A:
            defer { line.removeAll() }
            return .submit(text)
        case 0x7F, 0x08:
            guard !line.isEmpty else { return .none }
            // Continuation bytes are 10xxxxxx; drop them and the lead byte before them.
            while let last = line.popLast(), last & 0xC0 == 0x80 {}
            return .redraw
        case 0x15:
            guard !line.isEmpty else { return .none }
            line.removeAll()
            return .redraw
        case 0x04:
            return line.isEmpty ? .endOfInput : .none
        case 0x00..<0x20:
            return .none
        default:
            line.append(byte)
            return .echo(byte)
        }
    }
}
