@testable import DatabaseAgent
import SwitchyardCore
import Testing

@Suite("Access file: statements and tokens, every bad line refused with its number")
struct AccessFileTests {
    static let sample = """
        # the statements
        statement user_by_id = SELECT id, name FROM users WHERE id = ?
          statement add_user=INSERT INTO users (name, note, tag) VALUES (?, ?, '?')

        token web-secret statements=user_by_id rows=100 rate=50 name=web
        \ttoken admin-secret sql
        """

    @Test("a valid file: statements with their placeholder counts, tokens with their grants")
    func parsesValid() throws {
        let rules = try AccessFile.parse(Self.sample)
        #expect(rules.statements.count == 2)
        #expect(rules.statements["user_by_id"]?.sql == "SELECT id, name FROM users WHERE id = ?")
        #expect(rules.statements["user_by_id"]?.parameterCount == 1)
        #expect(rules.statements["add_user"]?.parameterCount == 2, "the ? inside quotes is no placeholder")
        #expect(rules.statements["add_user"]?.line == 3)
        #expect(rules.tokens.count == 2)
        let web = rules.tokens[0]
        #expect(web.label == "web" && !web.allowsSQL && web.maxRows == 100 && web.rate == 50)
        #expect(web.mayRun("user_by_id") && !web.mayRun("add_user"))
        let admin = rules.tokens[1]
        #expect(admin.label == "line-6" && admin.allowsSQL && admin.statements == nil && admin.maxRows == nil)
        #expect(admin.mayRun("add_user"))
        #expect(rules.tokenIndex(for: "admin-secret".utf8) == 1)
        #expect(rules.tokenIndex(for: "web-secret".utf8) == 0)
        #expect(rules.tokenIndex(for: "web-secre".utf8) == nil)
        #expect(rules.tokenIndex(for: "web-secrets".utf8) == nil)
        #expect(rules.tokenIndex(for: "".utf8) == nil)
    }

    @Test("CRLF line ends and an empty file")
    func lineEnds() throws {
        let rules = try AccessFile.parse("statement a = SELECT 1\r\ntoken t\r\n")
        #expect(rules.statements["a"]?.sql == "SELECT 1")
        #expect(rules.tokenIndex(for: "t".utf8) == 0)
        #expect(try AccessFile.parse("").tokens.isEmpty)
    }

    @Test("every error names its line and what is wrong", arguments: [
        ("statement", 1, "needs a name"),
        ("statement = SELECT 1", 1, "needs a name"),
        ("statement a SELECT 1", 1, "expected '='"),
        ("statement a =   ", 1, "has no SQL"),
        ("statement 1a = SELECT 1", 1, "bad statement name"),
        ("statement a = SELECT 1\nstatement a = SELECT 2", 2, "defined already (line 1)"),
        ("token", 1, "needs its secret"),
        ("token   ", 1, "needs its secret"),
        ("token t bogus", 1, "unknown token option 'bogus'"),
        ("token t sql=yes", 1, "'sql' takes no value"),
        ("token t rows", 1, "'rows' needs a value"),
        ("token t rows=0", 1, "expected a whole number"),
        ("token t rows=-5", 1, "expected a whole number"),
        ("token t rate=abc", 1, "expected a whole number"),
        ("token t rate=100000001", 1, "expected a whole number"),
        ("token t rows=5 rows=6", 1, "given twice"),
        ("token t statements=", 1, "an empty name"),
        ("token t statements=a,,b", 1, "an empty name"),
        ("token t statements=a;b", 1, "bad statement name"),
        ("token t name=", 1, "needs a label"),
        ("statement a = SELECT 1\ntoken t statements=a,b", 2, "statement 'b' is not defined"),
        ("token t\ntoken t", 2, "the same token is on line 1"),
        ("token t name=x\ntoken u name=x", 2, "token name 'x' is used on line 1"),
        ("\n\n# fine\nselect * from x", 4, "unknown entry 'select'"),
        ("statements a = SELECT 1", 1, "unknown entry 'statements'"),
    ])
    func errors(text: String, line: Int, reason: String) {
        do {
            _ = try AccessFile.parse(text)
            Issue.record("parsed: \(text)")
        } catch {
            #expect(error.line == line, "\(error)")
            #expect(error.reason.contains(reason), "\(error)")
            #expect("\(error)".hasPrefix("\(line): "))
        }
    }

    @Test("a name longer than the bound is refused")
    func longName() {
        let name = String(repeating: "a", count: AccessFile.maxNameBytes + 1)
        #expect(throws: AccessFileError.self) { try AccessFile.parse("statement \(name) = SELECT 1") }
        #expect(throws: Never.self) {
            try AccessFile.parse("statement \(name.dropLast()) = SELECT 1")
        }
    }

    @Test("control characters in a bad word are not echoed raw")
    func printableErrors() {
        do {
            _ = try AccessFile.parse("token t \u{1B}[31mred")
            Issue.record("parsed")
        } catch {
            #expect(!error.reason.contains("\u{1B}"))
        }
    }

    @Test("random inputs (and the sample fed in random pieces joined again) never crash: parsed or one error")
    func randomInputsNeverCrash() {
        var generator = SplitMix64(seed: 0x5EED)
        let alphabet = Array(
            "statement token sql rows= rate= statements= name= = , # ?'\"`\t\r\n abcXYZ019_-.é\u{0}".utf8)
        let sampleBytes = Array(Self.sample.utf8)
        for round in 0..<3000 {
            var bytes: [UInt8]
            if round % 3 == 0 {
                // Mutations of a valid file: a few bytes replaced, dropped or doubled.
                bytes = sampleBytes
                for _ in 0..<(1 + Int(generator.next() % 4)) {
                    let at = Int(generator.next() % UInt64(bytes.count))
                    switch generator.next() % 3 {
                    case 0: bytes[at] = alphabet[Int(generator.next() % UInt64(alphabet.count))]
                    case 1: bytes.remove(at: at)
                    default: bytes.insert(bytes[at], at: at)
                    }
                }
            } else {
                let count = Int(generator.next() % 200)
                bytes = (0..<count).map { _ in
                    round % 3 == 1 ? alphabet[Int(generator.next() % UInt64(alphabet.count))]
                        : UInt8(truncatingIfNeeded: generator.next())
                }
            }
            let text = String(decoding: bytes, as: UTF8.self)
            do {
                let rules = try AccessFile.parse(text)
                // Whatever parsed keeps the file's promises.
                for token in rules.tokens {
                    for name in token.statements ?? [] { #expect(rules.statements[name] != nil) }
                    #expect((token.maxRows ?? 1) >= 1 && (token.rate ?? 1) >= 1)
                }
                for (name, statement) in rules.statements { #expect(statement.name == name && !statement.sql.isEmpty) }
            } catch {
                let lines = AccessFile.lines(of: text).count
                #expect(error.line >= 1 && error.line <= lines, "line \(error.line) of \(lines)")
                #expect(!error.reason.isEmpty)
            }
        }
    }
}
