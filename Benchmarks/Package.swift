// swift-tools-version: 6.1
// The benchmark suite (issue "Benchmarks"): baseline servers and the load client.
//
// Kept apart from the main package so that the main package never depends on SwiftNIO. The Switchyard
// servers under test are the main package's release binary (`.build/release/switchyard`), started as
// processes by `scripts/bench`, so this package does not depend on it either.
import PackageDescription

let package = Package(
    name: "SwitchyardBenchmarks",
    platforms: [.macOS(.v15)],
    products: [
        .executable(name: "c-echo-server", targets: ["c-echo-server"]),
        .executable(name: "pingpong", targets: ["pingpong"]),
        .executable(name: "nio-echo", targets: ["nio-echo"]),
        .executable(name: "nio-framed-echo", targets: ["nio-framed-echo"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-nio", from: "2.81.0"),
        .package(url: "https://github.com/apple/swift-protobuf", from: "1.28.0"),
    ],
    targets: [
        // Single-threaded epoll echo server in C: the "what the kernel allows" reference.
        .executableTarget(name: "c-echo-server", path: "Sources/c-echo-server"),
        // Ping-pong load client in C (epoll), shared by every scenario.
        .executableTarget(name: "pingpong", path: "Sources/pingpong"),
        // Generated Swift for Protos/bench.proto (a copy that scripts/gen-proto refreshes).
        .target(
            name: "BenchProto",
            dependencies: [.product(name: "SwiftProtobuf", package: "swift-protobuf")]
        ),
        // Option parsing and bootstrap shared by the SwiftNIO baselines.
        .target(
            name: "NIOBenchSupport",
            dependencies: [
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
            ]
        ),
        // SwiftNIO baseline: raw echo.
        .executableTarget(
            name: "nio-echo",
            dependencies: [
                "NIOBenchSupport",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
            ]
        ),
        // SwiftNIO baseline: Lars frames (length-field decoder) with a protobuf body, echoed.
        .executableTarget(
            name: "nio-framed-echo",
            dependencies: [
                "BenchProto",
                "NIOBenchSupport",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "SwiftProtobuf", package: "swift-protobuf"),
            ]
        ),
    ]
)
