import Testing

@Test func loadBalanceAgentPlaceholder() { #expect(Bool(true)) }
