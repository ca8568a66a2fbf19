// swift-tools-version: 6.1
import PackageDescription

let package = Package(
    name: "Switchyard",
    platforms: [.macOS(.v15)],
    products: [
        .library(name: "Reactor", targets: ["Reactor"]),
        .library(name: "Messaging", targets: ["Messaging"]),
        .library(name: "Storage", targets: ["Storage"]),
        .library(name: "LoadBalancing", targets: ["LoadBalancing"]),
        .library(name: "LoadBalanceAgent", targets: ["LoadBalanceAgent"]),
        .library(name: "NameService", targets: ["NameService"]),
        .library(name: "Chat", targets: ["Chat"]),
        .executable(name: "switchyard", targets: ["switchyard"]),
        .executable(name: "switchyard-echo", targets: ["switchyard-echo"]),
    ],
    traits: [
        .trait(name: "MySQL", description: "MySQL/MariaDB driver through libmariadb (Debian libmariadb-dev)."),
        .trait(name: "PostgreSQL", description: "PostgreSQL driver through libpq (Debian libpq-dev)."),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
        .package(url: "https://github.com/apple/swift-log", from: "1.6.0"),
        .package(url: "https://github.com/apple/swift-collections", from: "1.1.0"),
        .package(url: "https://github.com/apple/swift-protobuf", from: "1.28.0"),
        .package(url: "https://github.com/apple/swift-crypto", from: "3.12.0"),
    ],
    targets: [
        // C shim: epoll, eventfd, timerfd, accept4, fd_set macros, signal-to-eventfd.
        .target(name: "CSwitchyardLinux"),
        .target(
            name: "Reactor",
            dependencies: [
                "CSwitchyardLinux",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "HeapModule", package: "swift-collections"),
                .product(name: "DequeModule", package: "swift-collections"),
            ]
        ),
        .target(
            name: "Messaging",
            dependencies: [
                "Reactor",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "DequeModule", package: "swift-collections"),
                .product(name: "SwiftProtobuf", package: "swift-protobuf"),
            ]
        ),
        // ---- Storage section (owned by the storage work) ----
        .systemLibrary(name: "CSQLite", path: "Sources/CSQLite", pkgConfig: "sqlite3",
                       providers: [.apt(["libsqlite3-dev"])]),
        // Server drivers: only built and linked when their trait is on, so the default build needs neither.
        .systemLibrary(name: "CMariaDB", path: "Sources/CMariaDB", pkgConfig: "libmariadb",
                       providers: [.apt(["libmariadb-dev"])]),
        .systemLibrary(name: "CLibPQ", path: "Sources/CLibPQ", pkgConfig: "libpq",
                       providers: [.apt(["libpq-dev"])]),
        .target(
            name: "Storage",
            dependencies: [
                "CSQLite",
                .target(name: "CMariaDB", condition: .when(traits: ["MySQL"])),
                .target(name: "CLibPQ", condition: .when(traits: ["PostgreSQL"])),
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        .testTarget(name: "StorageTests", dependencies: [
            "Storage", "TestSupport",
            .product(name: "Logging", package: "swift-log"),
        ]),
        // ---- end Storage section ----
        // Load balancing (issue 6): pure algorithms, the agent and its client API, the name service and reporter.
        .target(
            name: "LoadBalancing",
            dependencies: [.product(name: "Logging", package: "swift-log")]
        ),
        .target(
            name: "LoadBalanceAgent",
            dependencies: [
                "LoadBalancing", "Messaging", "Reactor",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "SwiftProtobuf", package: "swift-protobuf"),
            ]
        ),
        .target(
            name: "NameService",
            dependencies: [
                "LoadBalancing", "LoadBalanceAgent", "Messaging", "Reactor", "Storage",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "SwiftProtobuf", package: "swift-protobuf"),
            ]
        ),
        // Chat service (issue 7).
        .target(
            name: "Chat",
            dependencies: [
                "Messaging", "Reactor", "Storage",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "SwiftProtobuf", package: "swift-protobuf"),
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "_CryptoExtras", package: "swift-crypto"),
            ]
        ),
        .testTarget(name: "ChatTests", dependencies: ["Chat", "Messaging", "Reactor", "Storage", "TestSupport"]),
        .testTarget(name: "LoadBalancingTests", dependencies: ["LoadBalancing"]),
        .testTarget(name: "LoadBalanceAgentTests", dependencies: ["LoadBalanceAgent", "LoadBalancing", "Messaging", "Reactor"]),
        .testTarget(name: "NameServiceTests", dependencies: [
            "NameService", "LoadBalanceAgent", "Messaging", "Reactor", "Storage", "TestSupport",
        ]),
        .executableTarget(name: "switchyard-echo", dependencies: [
            "CSwitchyardLinux", "Reactor", .product(name: "Logging", package: "swift-log"),
        ]),
        .executableTarget(
            name: "switchyard",
            dependencies: [
                "CSwitchyardLinux",
                "Reactor",
                "Messaging",
                "Storage",
                "LoadBalancing",
                "LoadBalanceAgent",
                "NameService",
                "Chat",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        .testTarget(name: "ReactorTests", dependencies: ["Reactor", "TestSupport"]),
        .testTarget(name: "MessagingTests", dependencies: ["Messaging", "Reactor", "TestSupport"]),
        // Helpers shared by the test targets (sockets, waiting, test databases, log capture); not a product.
        .target(
            name: "TestSupport",
            dependencies: ["Reactor", .product(name: "Logging", package: "swift-log")],
            path: "Tests/TestSupport"
        ),
    ]
)
