import Testing
@Test func placeholderReactor() { #expect(Bool(true)) }
