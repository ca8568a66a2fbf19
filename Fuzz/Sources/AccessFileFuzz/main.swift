// libFuzzer target for the database agent's access file parser (AccessFile.parse). Built by scripts/fuzz
// (Fuzz/Package.swift).
//
// Input: the bytes of an access file (decoded as UTF-8, invalid bytes replaced). Checked: parsing never crashes and
// gives the same answer twice; an error names a line of the text and says something; a parsed file keeps its
// promises (every statement a token lists is defined, has SQL and a placeholder count no larger than its SQL's
// question marks; rows= and rate= are within bounds; each token is found by its own secret and no other).
@testable import DatabaseAgent

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzz(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    let text = String(decoding: UnsafeBufferPointer(start: data, count: size), as: UTF8.self)
    let lines = AccessFile.lines(of: text).count
    func parse() -> Result<AccessRules, AccessFileError> {
        Result { () throws(AccessFileError) in try AccessFile.parse(text) }
    }
    let first = parse()
    let second = parse()
    switch (first, second) {
    case (.failure(let a), .failure(let b)):
        precondition(a == b, "two parses disagree: \(a) vs \(b)")
        precondition(a.line >= 1 && a.line <= lines, "error line \(a.line) of \(lines)")
        precondition(!a.reason.isEmpty)
    case (.success(let rules), .success(let again)):
        precondition(rules.statements == again.statements && rules.tokens == again.tokens, "two parses disagree")
        for (name, statement) in rules.statements {
            precondition(statement.name == name && !statement.sql.isEmpty)
            precondition(statement.parameterCount <= statement.sql.utf8.filter { $0 == 0x3F }.count)
            precondition(statement.line >= 1 && statement.line <= lines)
        }
        for (index, token) in rules.tokens.enumerated() {
            for name in token.statements ?? [] { precondition(rules.statements[name] != nil, "undefined \(name)") }
            precondition((1...AccessFile.maxNumber).contains(token.maxRows ?? 1))
            precondition((1...AccessFile.maxNumber).contains(token.rate ?? 1))
            precondition(rules.tokenIndex(for: token.secret) == index, "token \(index) not found by its secret")
            precondition(rules.tokenIndex(for: token.secret + [0x21]) != index)
        }
    default:
        preconditionFailure("two parses disagree")
    }
    return 0
}
