import Storage

/// The command line's spelling of a parameter (`switchyard db-query --param ...`): a bare integer (`7`), `int:N`,
/// `double:X`, `text:ANYTHING` (the rest of the argument, as is), `blob:HEX` (an even number of hex digits) or
/// `null`.
public enum AgentParameter {
    /// The value of one `--param`; throws ``AgentParameterError`` for anything else.
    public static func parse(_ text: String) throws(AgentParameterError) -> SQLValue {
        if text == "null" { return .null }
        if let value = Int64(text) { return .integer(value) }
        guard let colon = text.firstIndex(of: ":") else {
            throw AgentParameterError(text: text, reason: "expected an integer, null, text:, int:, double: or blob:")
        }
        let kind = text[..<colon]
        let rest = String(text[text.index(after: colon)...])
        switch kind {
        case "text":
            return .text(rest)
        case "int":
            guard let value = Int64(rest) else { throw AgentParameterError(text: text, reason: "not a 64-bit integer") }
            return .integer(value)
        case "double":
            guard let value = Double(rest), !rest.isEmpty else {
                throw AgentParameterError(text: text, reason: "not a number")
            }
            return .double(value)
        case "blob":
            guard let bytes = hexBytes(rest) else {
                throw AgentParameterError(text: text, reason: "expected an even number of hex digits")
            }
            return .blob(bytes)
        default:
            throw AgentParameterError(text: text,
                                      reason: "unknown kind '\(kind)': expected text:, int:, double: or blob:")
        }
    }

    static func hexBytes(_ text: String) -> [UInt8]? {
        let digits = Array(text.utf8)
        guard digits.count % 2 == 0 else { return nil }
        func nibble(_ c: UInt8) -> UInt8? {
            switch c {
            case 0x30...0x39: return c - 0x30
            case 0x41...0x46: return c - 0x41 + 10
            case 0x61...0x66: return c - 0x61 + 10
            default: return nil
            }
        }
        var bytes: [UInt8] = []
        bytes.reserveCapacity(digits.count / 2)
        var i = 0
        while i < digits.count {
            guard let high = nibble(digits[i]), let low = nibble(digits[i + 1]) else { return nil }
            bytes.append(high << 4 | low)
            i += 2
        }
        return bytes
    }
}

/// A `--param` that is none of the spellings ``AgentParameter`` takes.
public struct AgentParameterError: Error, Equatable, Sendable, CustomStringConvertible {
    public let text: String
    public let reason: String
    public var description: String { "bad parameter '\(text.prefix(60))': \(reason)" }
}
