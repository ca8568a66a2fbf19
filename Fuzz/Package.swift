// swift-tools-version: 6.1
import Foundation
import PackageDescription

// The libFuzzer targets: a package of its own beside the project (which it uses by path), so the project's builds
// never see them. scripts/fuzz builds them with `swift build --sanitize=fuzzer --sanitize=address` into
// .build-fuzz and runs each for a bounded number of runs. Each target defines LLVMFuzzerTestOneInput and no main
// (libFuzzer's); the harnesses of internal cores use @testable imports (debug builds are testable).
//
// A path dependency is named after its folder: the project's folder name is whatever the clone is called.
let project = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().lastPathComponent

let package = Package(
    name: "SwitchyardFuzz",
    platforms: [.macOS(.v15)],
    dependencies: [
        .package(path: ".."),
        .package(url: "https://github.com/apple/swift-protobuf", from: "1.28.0"),
    ],
    targets: [
        // The input reader, the mock clock and the router driver the harnesses share.
        .target(name: "FuzzSupport", dependencies: [.product(name: "Messaging", package: project)]),
        // The frame header and decoder (standard library only).
        .executableTarget(name: "FrameParserFuzz", dependencies: [.product(name: "LarsWire", package: project)]),
        .executableTarget(name: "AgentFuzz", dependencies: [
            "FuzzSupport",
            .product(name: "LoadBalanceAgent", package: project),
            .product(name: "LoadBalancing", package: project),
            .product(name: "LarsProtocol", package: project),
            .product(name: "Messaging", package: project),
        ]),
        .executableTarget(name: "NameServiceFuzz", dependencies: [
            "FuzzSupport",
            .product(name: "NameService", package: project),
            .product(name: "Reactor", package: project),
            .product(name: "RouteStore", package: project),
            .product(name: "LoadBalancing", package: project),
            .product(name: "LarsProtocol", package: project),
            .product(name: "Messaging", package: project),
        ]),
        .executableTarget(name: "ReporterFuzz", dependencies: [
            "FuzzSupport",
            .product(name: "Reporter", package: project),
            .product(name: "LarsProtocol", package: project),
            .product(name: "Messaging", package: project),
        ]),
        .executableTarget(name: "ChatFuzz", dependencies: [
            "FuzzSupport",
            .product(name: "Chat", package: project),
            .product(name: "Messaging", package: project),
            .product(name: "SwiftProtobuf", package: "swift-protobuf"),
        ]),
        // The media relay's parsers: the HTTP request head, and the transport stream (packets, sections, PES
        // headers, the chunker).
        .executableTarget(name: "HTTPHeadFuzz", dependencies: [
            "FuzzSupport", .product(name: "MediaRelay", package: project),
        ]),
        .executableTarget(name: "TSChunkerFuzz", dependencies: [
            "FuzzSupport", .product(name: "MediaRelay", package: project),
        ]),
        // The database agent's access file parser.
        .executableTarget(name: "AccessFileFuzz", dependencies: [.product(name: "DatabaseAgent", package: project)]),
    ]
)
