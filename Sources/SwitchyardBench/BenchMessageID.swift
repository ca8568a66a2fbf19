/// Message ids of the benchmarks' protocol.
public enum BenchMessageID {
    /// The protobuf echo (`Switchyard_Bench_EchoMessage`), outside every service's range.
    public static let echo: Int32 = 1000
}
