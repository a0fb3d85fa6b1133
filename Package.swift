// swift-tools-version: 6.0
// statefn: a stateful serverless gateway. See README.md for the layout; each C library is wrapped by one module.
import PackageDescription

let package = Package(
    name: "statefn",
    platforms: [.macOS(.v14)],
    products: [
        .executable(name: "statefn", targets: ["statefn"])
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.8.2"),
        .package(url: "https://github.com/apple/swift-log", from: "1.16.2"),
        .package(url: "https://github.com/vapor/jwt-kit", from: "5.7.1"),
        .package(url: "https://github.com/apple/swift-crypto", from: "4.1.0"),
        .package(url: "https://github.com/apple/swift-metrics", from: "2.13.0"),
        .package(url: "https://github.com/swift-server/swift-prometheus", from: "2.4.1"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle", from: "2.13.0"),
    ],
    targets: [
        // C libraries: module maps and static inline shims for the macros Swift cannot see.
        .systemLibrary(name: "CJansson", pkgConfig: "jansson", providers: [.apt(["libjansson-dev"])]),
        .systemLibrary(name: "CLibPQ", pkgConfig: "libpq", providers: [.apt(["libpq-dev"])]),
        .systemLibrary(name: "CMicroHTTPD", pkgConfig: "libmicrohttpd", providers: [.apt(["libmicrohttpd-dev"])]),

        // GNU and Linux process calls that Swift's Glibc module hides (pipe2, pidfd_open, spawn file actions).
        .target(name: "CLinux"),

        // Small text helpers, each in one place: hex digits, the function name rule, trims.
        .target(name: "StatefnText"),
        // The only importer of CJansson.
        .target(name: "StatefnJSON", dependencies: ["CJansson", "StatefnText"]),
        // The only importer of CLibPQ.
        .target(
            name: "StatefnPostgres",
            dependencies: [
                "CLibPQ", "CLinux", "StatefnText", .product(name: "Logging", package: "swift-log"),
                .product(name: "Metrics", package: "swift-metrics"),
            ]),
        // The only importer of CMicroHTTPD.
        .target(
            name: "StatefnHTTP",
            dependencies: [
                "CMicroHTTPD", "StatefnJSON", "StatefnText", .product(name: "Logging", package: "swift-log"),
            ]),
        .target(
            name: "StatefnWorkers",
            dependencies: [
                "CLinux", "StatefnJSON", "StatefnText", .product(name: "Logging", package: "swift-log"),
                .product(name: "Metrics", package: "swift-metrics"),
            ]),
        // Who is calling and what they may touch: API keys, JWT/OIDC, scopes, rate limits.
        .target(
            name: "StatefnAuth",
            dependencies: [
                "StatefnJSON", "StatefnPostgres", "StatefnText",
                .product(name: "JWTKit", package: "jwt-kit"),
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "Logging", package: "swift-log"),
            ]),
        .target(
            name: "StatefnCore",
            dependencies: [
                "StatefnJSON", "StatefnPostgres", "StatefnHTTP", "StatefnWorkers", "StatefnAuth", "StatefnText",
                .product(name: "Logging", package: "swift-log"), .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "Metrics", package: "swift-metrics"),
            ]),
        .executableTarget(
            name: "statefn",
            dependencies: [
                "StatefnCore", "StatefnPostgres", "StatefnHTTP", "StatefnWorkers", "StatefnJSON", "StatefnAuth",
                "StatefnText", .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "Prometheus", package: "swift-prometheus"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ]),

        // Real parts for tests: a throwaway PostgreSQL cluster, the built binary, an HTTP client.
        .target(
            name: "StatefnTestSupport",
            dependencies: [
                "CLinux", "StatefnPostgres", "StatefnJSON", .product(name: "Logging", package: "swift-log"),
                .product(name: "JWTKit", package: "jwt-kit"), .product(name: "_CryptoExtras", package: "swift-crypto"),
            ]),

        .testTarget(name: "StatefnJSONTests", dependencies: ["StatefnJSON"]),
        .testTarget(
            name: "StatefnAuthTests",
            dependencies: [
                "StatefnAuth", "StatefnJSON", "StatefnHTTP", "StatefnPostgres", "StatefnCore", "StatefnTestSupport",
                .product(name: "JWTKit", package: "jwt-kit"),
                .product(name: "_CryptoExtras", package: "swift-crypto"),
            ]),
        .testTarget(name: "StatefnPostgresTests", dependencies: ["StatefnPostgres", "StatefnTestSupport"]),
        .testTarget(name: "StatefnHTTPTests", dependencies: ["StatefnHTTP", "StatefnJSON", "StatefnTestSupport"]),
        .testTarget(
            name: "StatefnWorkersTests", dependencies: ["StatefnWorkers", "StatefnJSON", "StatefnTestSupport"],
            exclude: ["Fixtures"]),
        .testTarget(
            name: "StatefnCoreTests",
            dependencies: [
                "StatefnCore", "StatefnJSON", "StatefnPostgres", "StatefnWorkers", "StatefnAuth", "StatefnTestSupport",
            ]),
        .testTarget(
            name: "EndToEndTests",
            dependencies: [
                "StatefnJSON", "StatefnPostgres", "StatefnTestSupport", .product(name: "JWTKit", package: "jwt-kit"),
                .product(name: "_CryptoExtras", package: "swift-crypto"),
            ],
            exclude: ["Fixtures"]),
    ],
    swiftLanguageModes: [.v6]
)
