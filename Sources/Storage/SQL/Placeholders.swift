/// Rewrites `?` placeholders for databases that number them.
enum Placeholders {
    /// Replaces each `?` outside string literals, quoted identifiers, dollar-quoted strings and comments by
    /// `$1`, `$2`, ... (PostgreSQL). Returns the new text and the number of placeholders.
    ///
    /// Not replaced: `?` inside `'...'` (with `''` escapes), `E'...'` (with backslash escapes), `"..."`,
    /// `$tag$...$tag$`, `-- ...` and `/* ... */` (nested). PostgreSQL's JSON operators `?`, `?|` and `?&` are
    /// therefore not usable directly; write `jsonb_exists(a, b)` instead.
    static func numbered(_ sql: String) -> (sql: String, count: Int) {
        let bytes = Array(sql.utf8)
        var out: [UInt8] = []
        out.reserveCapacity(bytes.count + 8)
        var count = 0
        var i = 0
        let n = bytes.count

        func at(_ k: Int) -> UInt8 { k < n ? bytes[k] : 0 }
        func isIdentByte(_ b: UInt8) -> Bool {
            (b >= 0x30 && b <= 0x39) || (b >= 0x41 && b <= 0x5A) || (b >= 0x61 && b <= 0x7A) || b == 0x5F || b >= 0x80
        }
        /// Copies a literal or identifier that opens with `quote` at `i`, through its closing quote (a doubled quote
        /// stands for itself; with `backslashEscapes`, a backslash escapes the next byte).
        func copyQuoted(_ quote: UInt8, backslashEscapes: Bool) {
            out.append(quote)
            i += 1
            while i < n {
                let c = bytes[i]
                out.append(c)
                i += 1
                if backslashEscapes && c == UInt8(ascii: "\\") && i < n {
                    out.append(bytes[i])
                    i += 1
                } else if c == quote {
                    guard at(i) == quote else { return }
                    out.append(bytes[i])
                    i += 1
                }
            }
        }

        while i < n {
            let b = bytes[i]
            switch b {
            case UInt8(ascii: "'"):
                // E'..' allows backslash escapes; detect the E prefix (not part of a longer identifier).
                let escapes = i > 0 && (bytes[i - 1] == UInt8(ascii: "E") || bytes[i - 1] == UInt8(ascii: "e"))
                    && !(i > 1 && isIdentByte(bytes[i - 2]))
                copyQuoted(b, backslashEscapes: escapes)
            case UInt8(ascii: "\""):
                copyQuoted(b, backslashEscapes: false)
            case UInt8(ascii: "-") where at(i + 1) == UInt8(ascii: "-"):
                while i < n && bytes[i] != UInt8(ascii: "\n") {
                    out.append(bytes[i])
                    i += 1
                }
            case UInt8(ascii: "/") where at(i + 1) == UInt8(ascii: "*"):
                var depth = 0
                repeat {
                    if bytes[i] == UInt8(ascii: "/") && at(i + 1) == UInt8(ascii: "*") {
                        depth += 1
                        out.append(contentsOf: bytes[i...i + 1])
                        i += 2
                    } else if bytes[i] == UInt8(ascii: "*") && at(i + 1) == UInt8(ascii: "/") {
                        depth -= 1
                        out.append(contentsOf: bytes[i...i + 1])
                        i += 2
                    } else {
                        out.append(bytes[i])
                        i += 1
                    }
                } while i < n && depth > 0
            case UInt8(ascii: "$") where !(i > 0 && isIdentByte(bytes[i - 1])):
                // $tag$ ... $tag$ (tag may be empty); `$1` is a parameter, copied as is.
                var j = i + 1
                while j < n && isIdentByte(bytes[j]) && !(j == i + 1 && bytes[j] >= 0x30 && bytes[j] <= 0x39) {
                    j += 1
                }
                if at(j) == UInt8(ascii: "$") {
                    let tag = Array(bytes[i...j])
                    out.append(contentsOf: tag)
                    i = j + 1
                    while i < n {
                        if bytes[i] == UInt8(ascii: "$") && i + tag.count <= n && Array(bytes[i..<i + tag.count]) == tag {
                            out.append(contentsOf: tag)
                            i += tag.count
                            break
                        }
                        out.append(bytes[i])
                        i += 1
                    }
                } else {
                    out.append(b)
                    i += 1
                }
            case UInt8(ascii: "?"):
                count += 1
                out.append(UInt8(ascii: "$"))
                out.append(contentsOf: String(count).utf8)
                i += 1
            default:
                out.append(b)
                i += 1
            }
        }
        return (String(decoding: out, as: UTF8.self), count)
    }
}
