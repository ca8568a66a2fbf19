import Testing

@Test func loadBalancingPlaceholder() { #expect(Bool(true)) }
