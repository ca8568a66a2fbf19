/// A test failure with a message: a failed expectation about a peer, a missing executable, a test setup that
/// cannot run.
public struct TestFailure: Error, CustomStringConvertible {
    public let description: String
    public init(_ description: String) { self.description = description }
}
