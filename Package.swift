// swift-tools-version: 6.1
import PackageDescription

// The module graph (arrows point down only; no service module imports another service module):
//
//   switchyard (CLI)   SwitchyardDemo, SwitchyardBench (internal; only the CLI links them)
//   services:          NameService  Reporter  LoadBalanceAgent  Chat  DatabaseAgent
//   clients:           LoadBalanceClient (async, blocking, ServiceRegistration)
//   RouteStore (route tables)    LoadBalancing (pure)    LarsProtocol (messages, ids, return codes)
//   Storage (incl. agent://)     Messaging (router, framed TCP/UDP, async client)
//   DatabaseAgentProtocol        Reactor                 LarsWire (frame header and decoder)
//                                CSwitchyardLinux
let package = Package(
    name: "Switchyard",
    platforms: [.macOS(.v15)],
    products: [
        .library(name: "Reactor", targets: ["Reactor"]),
        .library(name: "LarsWire", targets: ["LarsWire"]),
        .library(name: "Messaging", targets: ["Messaging"]),
        .library(name: "LarsProtocol", targets: ["LarsProtocol"]),
        .library(name: "Storage", targets: ["Storage"]),
        .library(name: "LoadBalancing", targets: ["LoadBalancing"]),
        .library(name: "RouteStore", targets: ["RouteStore"]),
        .library(name: "LoadBalanceClient", targets: ["LoadBalanceClient"]),
        .library(name: "LoadBalanceAgent", targets: ["LoadBalanceAgent"]),
        .library(name: "NameService", targets: ["NameService"]),
        .library(name: "Reporter", targets: ["Reporter"]),
        .library(name: "Chat", targets: ["Chat"]),
        .library(name: "MediaRelay", targets: ["MediaRelay"]),
        .library(name: "ReverseProxy", targets: ["ReverseProxy"]),
        .library(name: "DatabaseAgentProtocol", targets: ["DatabaseAgentProtocol"]),
        .library(name: "DatabaseAgent", targets: ["DatabaseAgent"]),
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
        .package(url: "https://github.com/swift-server/swift-service-lifecycle", from: "2.6.0"),
        .package(url: "https://github.com/apple/swift-metrics", from: "2.5.0"),
    ],
    targets: [
        // Standard library only: what every module shares (Duration units).
        .target(name: "SwitchyardCore"),

        // ---- The reactor ----
        // C shim: epoll, eventfd, timerfd, accept4, fd_set macros, signal-to-eventfd.
        .target(name: "CSwitchyardLinux"),
        .target(
            name: "Reactor",
            dependencies: [
                "CSwitchyardLinux", "SwitchyardCore",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "HeapModule", package: "swift-collections"),
                .product(name: "DequeModule", package: "swift-collections"),
            ]
        ),

        // ---- Frames and messages ----
        // The Lars frame header and decoder: standard library only.
        .target(name: "LarsWire"),
        .target(
            name: "Messaging",
            dependencies: [
                "Reactor", "LarsWire", "SwitchyardCore",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "DequeModule", package: "swift-collections"),
                .product(name: "SwiftProtobuf", package: "swift-protobuf"),
            ]
        ),
        // The Lars protocol: generated messages, typed message ids, return codes, Host <-> HostInfo.
        .target(
            name: "LarsProtocol",
            dependencies: [
                "LarsWire", "LoadBalancing",
                .product(name: "SwiftProtobuf", package: "swift-protobuf"),
            ]
        ),

        // ---- Storage ----
        // The database agent's wire contract (generated messages, frame ids): shared by the agent and Storage's
        // agent:// driver, so that neither depends on the other.
        .target(
            name: "DatabaseAgentProtocol",
            dependencies: ["LarsWire", .product(name: "SwiftProtobuf", package: "swift-protobuf")]
        ),
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
                "CSQLite", "SwitchyardCore", "DatabaseAgentProtocol", "LarsWire",
                .product(name: "SwiftProtobuf", package: "swift-protobuf"),
                .target(name: "CMariaDB", condition: .when(traits: ["MySQL"])),
                .target(name: "CLibPQ", condition: .when(traits: ["PostgreSQL"])),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ]
        ),

        // ---- Load balancing ----
        // The balancer state machine, rings and weights: pure, no I/O.
        .target(
            name: "LoadBalancing",
            dependencies: ["SwitchyardCore", .product(name: "Logging", package: "swift-log")]
        ),
        // The route tables (RouteData, RouteVersion, RouteChange, ServerCallStatus): schema and admin.
        .target(name: "RouteStore", dependencies: ["LoadBalancing", "Storage"]),
        // The client APIs an application links to reach its agent: no agent server, no Storage, no Foundation.
        .target(
            name: "LoadBalanceClient",
            dependencies: [
                "SwitchyardCore", "LoadBalancing", "LarsProtocol", "Messaging", "Reactor",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ]
        ),

        // ---- Services ----
        .target(
            name: "LoadBalanceAgent",
            dependencies: [
                "SwitchyardCore", "LoadBalancing", "LarsProtocol", "Messaging", "Reactor",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "SwiftProtobuf", package: "swift-protobuf"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "Metrics", package: "swift-metrics"),
            ]
        ),
        .target(
            name: "NameService",
            dependencies: [
                "LoadBalancing", "LarsProtocol", "Messaging", "Reactor", "RouteStore", "Storage",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "SwiftProtobuf", package: "swift-protobuf"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "DequeModule", package: "swift-collections"),
            ]
        ),
        .target(
            name: "Reporter",
            dependencies: [
                "SwitchyardCore", "LarsProtocol", "Messaging", "Reactor", "RouteStore", "Storage",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "Metrics", package: "swift-metrics"),
            ]
        ),
        .target(
            name: "Chat",
            dependencies: [
                "SwitchyardCore", "LarsWire", "Messaging", "Reactor", "Storage",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "SwiftProtobuf", package: "swift-protobuf"),
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "_CryptoExtras", package: "swift-crypto"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "Metrics", package: "swift-metrics"),
            ]
        ),

        // The media relay: MPEG-TS chunking and pacing (pure), one reader and many viewers per playback.
        .target(name: "MediaRelay", dependencies: [
            "SwitchyardCore", "Storage", "Reactor", "Messaging", "LarsWire", "LoadBalancing", "LoadBalanceClient",
            .product(name: "DequeModule", package: "swift-collections"),
            .product(name: "Logging", package: "swift-log"),
            .product(name: "SwiftProtobuf", package: "swift-protobuf"),
            .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
        ]),

        // The reverse proxy: backends picked through the agent, bytes relayed by the reactor's tunnels.
        .target(name: "ReverseProxy", dependencies: [
            "SwitchyardCore", "Reactor", "LoadBalancing", "LoadBalanceClient",
            .product(name: "Logging", package: "swift-log"),
            .product(name: "Metrics", package: "swift-metrics"),
            .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
        ]),

        // The database agent (the seed's mysqlAgent): named statements and tokens over frames, on the pool.
        .target(name: "DatabaseAgent", dependencies: [
            "SwitchyardCore", "DatabaseAgentProtocol", "Storage", "Reactor", "Messaging", "LarsWire",
            .product(name: "DequeModule", package: "swift-collections"),
            .product(name: "Logging", package: "swift-log"),
            .product(name: "Metrics", package: "swift-metrics"),
            .product(name: "SwiftProtobuf", package: "swift-protobuf"),
            .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
        ]),

        // ---- Internal targets (not products): the demo, the benchmarks, the echo service ----
        .target(name: "EchoServer", dependencies: ["Reactor", .product(name: "Logging", package: "swift-log")]),
        .target(
            name: "SwitchyardDemo",
            dependencies: [
                "SwitchyardCore", "LoadBalancing", "LoadBalanceAgent", "LoadBalanceClient", "NameService", "Reporter",
                "RouteStore",
                "Reactor", "Storage", "EchoServer",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "UnixSignals", package: "swift-service-lifecycle"),
            ]
        ),
        .target(
            name: "SwitchyardBench",
            dependencies: [
                "SwitchyardCore", "Chat", "LarsWire", "LoadBalancing", "LoadBalanceAgent", "LoadBalanceClient",
                "Messaging", "Reactor",
                "Storage", "DatabaseAgent",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "SwiftProtobuf", package: "swift-protobuf"),
            ]
        ),

        // ---- Executables: argument parsing and wiring ----
        .executableTarget(name: "switchyard-echo", dependencies: [
            "CSwitchyardLinux", "Reactor", "EchoServer", .product(name: "Logging", package: "swift-log"),
        ]),
        // C helpers only the command line uses (stdout flushing).
        .target(name: "CSwitchyardCLI"),
        .executableTarget(
            name: "switchyard",
            dependencies: [
                "SwitchyardCore", "CSwitchyardCLI", "Reactor", "LarsProtocol", "Messaging", "Storage", "LoadBalancing",
                "RouteStore",
                "LoadBalanceClient", "LoadBalanceAgent", "NameService", "Reporter", "Chat", "MediaRelay",
                "ReverseProxy", "DatabaseAgent", "EchoServer", "SwitchyardDemo", "SwitchyardBench",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ]
        ),

        // ---- Tests ----
        // Helpers shared by the test targets (sockets, waiting, test databases, log capture); not a product.
        .target(
            name: "TestSupport",
            dependencies: ["Reactor", "Storage", "DatabaseAgent", .product(name: "Logging", package: "swift-log")],
            path: "Tests/TestSupport"
        ),
        // Unique module ids and ready pools for the suites on the route tables.
        .target(
            name: "RouteTestSupport",
            dependencies: ["RouteStore", "Storage", .product(name: "Logging", package: "swift-log")],
            path: "Tests/RouteTestSupport"
        ),
        .testTarget(name: "ReactorTests", dependencies: ["Reactor", "EchoServer", "TestSupport"]),
        .testTarget(name: "MessagingTests", dependencies: [
            "Messaging", "LarsWire", "LarsProtocol", "LoadBalancing", "Reactor", "SwitchyardBench", "TestSupport",
            .product(name: "Metrics", package: "swift-metrics"),
            .product(name: "MetricsTestKit", package: "swift-metrics"),
        ]),
        .testTarget(name: "StorageTests", dependencies: [
            "Storage", "TestSupport",
            .product(name: "Logging", package: "swift-log"),
        ]),
        .testTarget(name: "LoadBalancingTests", dependencies: ["LoadBalancing"]),
        .testTarget(name: "LoadBalanceAgentTests", dependencies: [
            "LoadBalanceAgent", "LoadBalanceClient", "LoadBalancing", "LarsProtocol", "Messaging", "Reactor",
            "TestSupport",
        ]),
        .testTarget(name: "NameServiceTests", dependencies: [
            "NameService", "RouteStore", "LoadBalanceClient", "LoadBalancing", "LarsProtocol",
            "Messaging", "Reactor", "Storage", "TestSupport", "RouteTestSupport",
        ]),
        .testTarget(name: "ReporterTests", dependencies: [
            "Reporter", "RouteStore", "LoadBalancing", "LarsProtocol", "Messaging", "Reactor", "Storage", "TestSupport",
            "RouteTestSupport",
            .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
        ]),
        .testTarget(name: "CLITests", dependencies: ["TestSupport"]),
        .testTarget(name: "MediaRelayTests", dependencies: [
            "MediaRelay", "Storage", "Reactor", "Messaging", "LarsWire", "TestSupport",
            "LarsProtocol", "LoadBalancing", "LoadBalanceClient", "LoadBalanceAgent", "NameService", "RouteStore",
            "RouteTestSupport",
            .product(name: "SwiftProtobuf", package: "swift-protobuf"),
            .product(name: "Logging", package: "swift-log"),
        ]),
        .testTarget(name: "ReverseProxyTests", dependencies: [
            "ReverseProxy", "LoadBalanceAgent", "LoadBalanceClient", "LoadBalancing", "NameService", "RouteStore",
            "Reactor", "Storage", "TestSupport", "RouteTestSupport",
            .product(name: "Logging", package: "swift-log"),
            .product(name: "Metrics", package: "swift-metrics"),
            .product(name: "MetricsTestKit", package: "swift-metrics"),
        ]),
        .testTarget(name: "DatabaseAgentTests", dependencies: [
            "DatabaseAgent", "Storage", "Messaging", "Reactor", "LarsWire", "TestSupport",
            .product(name: "Logging", package: "swift-log"),
            .product(name: "SwiftProtobuf", package: "swift-protobuf"),
        ]),
        .testTarget(name: "ChatTests", dependencies: [
            "Chat", "Messaging", "Reactor", "Storage", "TestSupport",
            .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
        ]),
    ]
)
