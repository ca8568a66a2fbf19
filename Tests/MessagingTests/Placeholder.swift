import Testing
@Test func placeholderMessaging() { #expect(Bool(true)) }
