import Testing

@testable import Storage

@Suite struct PlaceholderTests {
    @Test(arguments: [
        ("SELECT ?", "SELECT $1", 1),
        ("INSERT INTO t (a, b) VALUES (?, ?)", "INSERT INTO t (a, b) VALUES ($1, $2)", 2),
        ("SELECT 'a?b', ?", "SELECT 'a?b', $1", 1),
        ("SELECT 'it''s ?', ?", "SELECT 'it''s ?', $1", 1),
        ("SELECT E'\\' ?', ?", "SELECT E'\\' ?', $1", 1),
        ("SELECT \"col?\" FROM t WHERE x = ?", "SELECT \"col?\" FROM t WHERE x = $1", 1),
        ("SELECT ? -- what?\n, ?", "SELECT $1 -- what?\n, $2", 2),
        ("SELECT /* a? /* nested? */ b? */ ?", "SELECT /* a? /* nested? */ b? */ $1", 1),
        ("SELECT $$ a ? $$, ?", "SELECT $$ a ? $$, $1", 1),
        ("SELECT $tag$ ? $x$ ? $tag$, ?", "SELECT $tag$ ? $x$ ? $tag$, $1", 1),
        ("SELECT $1", "SELECT $1", 0),
        ("SELECT 'unterminated ?", "SELECT 'unterminated ?", 0),
        ("SELECT 'ünï?', ?", "SELECT 'ünï?', $1", 1),
    ])
    func numbersPlaceholdersOutsideLiterals(input: String, expected: String, count: Int) {
        let (sql, n) = Placeholders.numbered(input)
        #expect(sql == expected)
        #expect(n == count)
    }
}
