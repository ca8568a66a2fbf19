import Testing

@Test func chatPlaceholder() { #expect(Bool(true)) }
