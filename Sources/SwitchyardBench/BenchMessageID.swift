import LarsWire

/// Message ids of the benchmarks' protocol.
public struct BenchMessageID: FrameMessageID {
    public let rawValue: Int32
    public init(rawValue: Int32) { self.rawValue = rawValue }

    /// The protobuf echo (`Switchyard_Bench_EchoMessage`), outside every service's range.
    public static let echo = BenchMessageID(rawValue: 1000)
}
