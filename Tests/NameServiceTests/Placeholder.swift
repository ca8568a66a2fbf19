import Testing

@Test func nameServicePlaceholder() { #expect(Bool(true)) }
