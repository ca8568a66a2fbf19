/// The access file of a database agent: its named statements and the tokens of its callers.
///
/// One entry per line; blank lines and lines whose first non-blank character is `#` are ignored (a `#` later on a
/// line is part of it: SQL may hold one).
///
///     # name -> SQL with ? placeholders
///     statement user_by_id = SELECT id, name FROM users WHERE id = ?
///     # a caller: its secret, then what it may do
///     token s3cret statements=user_by_id rows=100 rate=50 name=web
///     token admin-secret sql
///
/// A token line: the secret (no blanks), then in any order `sql` (may send SQL text), `statements=A,B` (only these
/// names; without it, every statement), `rows=N` (at most N rows per answer), `rate=N` (at most N requests a second,
/// a burst of N), `name=LABEL` (how statistics and metrics call it; default `line-L`, never the secret).
public enum AccessFile {
    /// Longest statement or token name, in bytes.
    public static let maxNameBytes = 128
    /// Largest `rows=` and `rate=`.
    public static let maxNumber = 100_000_000

    /// Parses the text of an access file. Throws ``AccessFileError`` for the first bad line.
    public static func parse(_ text: String) throws(AccessFileError) -> AccessRules {
        var statements: [String: NamedStatement] = [:]
        var tokens: [TokenGrant] = []
        var secrets: [String: Int] = [:]
        var labels: [String: Int] = [:]
        var lineNumber = 0
        for rawLine in lines(of: text) {
            lineNumber += 1
            var line = Substring(rawLine)
            if line.last == "\r" { line = line.dropLast() }
            let trimmed = line.drop(while: isBlank)
            if trimmed.isEmpty || trimmed.first == "#" { continue }
            let keyword = trimmed.prefix(while: { !isBlank($0) })
            let rest = trimmed.dropFirst(keyword.count).drop(while: isBlank)
            switch keyword {
            case "statement":
                let statement = try parseStatement(rest, line: lineNumber)
                if let earlier = statements[statement.name] {
                    throw AccessFileError(
                        line: lineNumber,
                        reason: "statement '\(statement.name)' is defined already (line \(earlier.line))")
                }
                statements[statement.name] = statement
            case "token":
                let token = try parseToken(rest, line: lineNumber)
                let secret = String(decoding: token.secret, as: UTF8.self)
                if let earlier = secrets[secret] {
                    throw AccessFileError(line: lineNumber, reason: "the same token is on line \(earlier) already")
                }
                if let earlier = labels[token.label] {
                    throw AccessFileError(line: lineNumber,
                                          reason: "token name '\(token.label)' is used on line \(earlier)")
                }
                secrets[secret] = lineNumber
                labels[token.label] = lineNumber
                tokens.append(token)
            default:
                throw AccessFileError(line: lineNumber, reason: "unknown entry '\(printable(keyword))': "
                                      + "expected 'statement NAME = SQL' or 'token SECRET ...'")
            }
        }
        for token in tokens {
            for name in token.statements?.sorted() ?? [] where statements[name] == nil {
                throw AccessFileError(line: token.line, reason: "statement '\(name)' is not defined in the file")
            }
        }
        return AccessRules(statements: statements, tokens: tokens)
    }

    /// The lines of a text: LF and CRLF end a line (in Swift "\r\n" is one character).
    static func lines(of text: String) -> [Substring] {
        text.split(omittingEmptySubsequences: false, whereSeparator: { $0 == "\n" || $0 == "\r\n" })
    }

    private static func parseStatement(_ text: Substring, line: Int) throws(AccessFileError) -> NamedStatement {
        let name = text.prefix(while: { !isBlank($0) && $0 != "=" })
        guard !name.isEmpty else {
            throw AccessFileError(line: line, reason: "a statement needs a name: 'statement NAME = SQL'")
        }
        try checkName(name, what: "statement name", line: line)
        let afterName = text.dropFirst(name.count).drop(while: isBlank)
        guard afterName.first == "=" else {
            throw AccessFileError(line: line, reason: "expected '=' after the statement name '\(name)'")
        }
        let sql = trimBlanks(afterName.dropFirst())
        guard !sql.isEmpty else { throw AccessFileError(line: line, reason: "statement '\(name)' has no SQL") }
        return NamedStatement(name: String(name), sql: String(sql), parameterCount: countPlaceholders(sql), line: line)
    }

    private static func parseToken(_ text: Substring, line: Int) throws(AccessFileError) -> TokenGrant {
        let words = text.split(whereSeparator: isBlank)
        guard let secret = words.first else { throw AccessFileError(line: line, reason: "a token needs its secret") }
        var grant = TokenGrant(secret: Array(secret.utf8), label: "line-\(line)", line: line)
        var seen: Set<Substring> = []
        for word in words.dropFirst() {
            let key = word.prefix(while: { $0 != "=" })
            let hasValue = key.count < word.count
            let value = hasValue ? word.dropFirst(key.count + 1) : ""
            guard seen.insert(key).inserted else {
                throw AccessFileError(line: line, reason: "'\(printable(key))' is given twice")
            }
            switch (key, hasValue) {
            case ("sql", false):
                grant.allowsSQL = true
            case ("statements", true):
                let names = value.split(separator: ",", omittingEmptySubsequences: false)
                var set: Set<String> = []
                for name in names {
                    guard !name.isEmpty else {
                        throw AccessFileError(line: line, reason: "an empty name in 'statements=\(printable(value))'")
                    }
                    try checkName(name, what: "statement name", line: line)
                    set.insert(String(name))
                }
                grant.statements = set
            case ("rows", true):
                grant.maxRows = try number(value, key: "rows", line: line)
            case ("rate", true):
                grant.rate = try number(value, key: "rate", line: line)
            case ("name", true):
                guard !value.isEmpty else { throw AccessFileError(line: line, reason: "'name=' needs a label") }
                try checkName(value, what: "token name", line: line)
                grant.label = String(value)
            case ("sql", true):
                throw AccessFileError(line: line, reason: "'sql' takes no value")
            case ("statements", false), ("rows", false), ("rate", false), ("name", false):
                throw AccessFileError(line: line, reason: "'\(key)' needs a value: '\(key)=...'")
            default:
                throw AccessFileError(line: line, reason: "unknown token option '\(printable(word))': "
                                      + "expected sql, statements=, rows=, rate= or name=")
            }
        }
        return grant
    }

    private static func number(_ text: Substring, key: String, line: Int) throws(AccessFileError) -> Int {
        guard let n = Int(text), n >= 1, n <= maxNumber else {
            throw AccessFileError(line: line,
                                  reason: "'\(key)=\(printable(text))': expected a whole number 1...\(maxNumber)")
        }
        return n
    }

    private static func checkName(_ name: Substring, what: String, line: Int) throws(AccessFileError) {
        guard name.utf8.count <= maxNameBytes else {
            throw AccessFileError(line: line, reason: "\(what) longer than \(maxNameBytes) bytes")
        }
        guard let first = name.utf8.first, isNameStart(first), name.utf8.allSatisfy(isNameByte) else {
            throw AccessFileError(line: line, reason: "bad \(what) '\(printable(name))': "
                                  + "letters, digits, '_', '-' and '.', starting with a letter or '_'")
        }
    }

    private static func isNameStart(_ b: UInt8) -> Bool {
        (b >= 0x41 && b <= 0x5A) || (b >= 0x61 && b <= 0x7A) || b == 0x5F
    }

    private static func isNameByte(_ b: UInt8) -> Bool {
        isNameStart(b) || (b >= 0x30 && b <= 0x39) || b == 0x2D || b == 0x2E
    }

    static func isBlank(_ c: Character) -> Bool { c == " " || c == "\t" }

    private static func trimBlanks(_ text: Substring) -> Substring {
        var t = text.drop(while: isBlank)
        while let last = t.last, isBlank(last) || last == "\r" { t = t.dropLast() }
        return t
    }

    /// The text for an error message: at most 40 characters, control characters shown as `?`.
    private static func printable(_ text: Substring) -> String {
        let shown = text.prefix(40).map { c -> Character in
            c.unicodeScalars.allSatisfy({ $0.value >= 0x20 && $0.value != 0x7F }) ? c : "?"
        }
        return String(shown) + (text.count > 40 ? "..." : "")
    }

    /// The `?` placeholders of SQL text outside quoted strings and identifiers ('...', "...", `...`).
    static func countPlaceholders(_ sql: some StringProtocol) -> Int {
        var count = 0
        var quote: UInt8?
        for b in sql.utf8 {
            if let q = quote {
                if b == q { quote = nil }
            } else if b == 0x27 || b == 0x22 || b == 0x60 {
                quote = b
            } else if b == 0x3F {
                count += 1
            }
        }
        return count
    }
}

/// A bad line of an access file.
public struct AccessFileError: Error, Equatable, Sendable, CustomStringConvertible {
    /// The line, from 1.
    public let line: Int
    /// What is wrong with it.
    public let reason: String

    public init(line: Int, reason: String) {
        self.line = line
        self.reason = reason
    }

    /// `LINE: reason`.
    public var description: String { "\(line): \(reason)" }
}

/// A named statement of the access file.
public struct NamedStatement: Sendable, Hashable {
    public let name: String
    public let sql: String
    /// Its `?` placeholders: a request must bind exactly as many parameters.
    public let parameterCount: Int
    /// Its line in the file.
    public let line: Int
}

/// What one token may do.
public struct TokenGrant: Sendable, Hashable {
    /// The secret the caller sends (compared in constant time).
    let secret: [UInt8]
    /// Its name in statistics and metrics (`name=`, or `line-L`).
    public internal(set) var label: String
    /// May send SQL text (`sql`).
    public internal(set) var allowsSQL = false
    /// The statement names it may run (`statements=`); nil: every one.
    public internal(set) var statements: Set<String>?
    /// Rows per answer at most (`rows=`); nil: no cap of its own.
    public internal(set) var maxRows: Int?
    /// Requests per second (`rate=`); nil: no limit.
    public internal(set) var rate: Int?
    /// Its line in the file.
    public let line: Int

    init(secret: [UInt8], label: String, line: Int) {
        self.secret = secret
        self.label = label
        self.line = line
    }

    /// True when it may run the statement `name`.
    public func mayRun(_ name: String) -> Bool { statements?.contains(name) ?? true }
}

/// The parsed access file: statements by name, and the tokens.
public struct AccessRules: Sendable {
    public let statements: [String: NamedStatement]
    public let tokens: [TokenGrant]

    public init(statements: [String: NamedStatement], tokens: [TokenGrant]) {
        self.statements = statements
        self.tokens = tokens
    }

    /// The index in ``tokens`` of the token whose secret is `presented`, or nil. Compares against every token, each
    /// in time that depends on the lengths only, never on where the bytes differ.
    public func tokenIndex(for presented: some Collection<UInt8>) -> Int? {
        var found = -1
        let given = Array(presented)
        for (index, token) in tokens.enumerated() {
            let equal = Self.constantTimeEqual(token.secret, given)
            // No early exit: a later match does not change the time either.
            found = equal && found < 0 ? index : found
        }
        return found >= 0 ? found : nil
    }

    /// Byte-wise comparison whose time depends only on the longer length.
    static func constantTimeEqual(_ a: [UInt8], _ b: [UInt8]) -> Bool {
        var difference = UInt64(a.count ^ b.count)
        let n = max(a.count, b.count)
        for i in 0..<n {
            let x = i < a.count ? a[i] : 0
            let y = i < b.count ? b[i] : 0
            difference |= UInt64(x ^ y)
        }
        return difference == 0
    }
}
