import Logging
import RouteStore
import Storage

// What the route-table suites (name service, reporter) share: unique module ids, a quiet logger, a ready pool.

/// A module id no other test run uses (server databases are shared).
public func uniqueModid() -> Int32 { Int32.random(in: 100_000...2_000_000_000) }

/// A logger that keeps warnings and errors only.
public let quietLogger: Logger = {
    var logger = Logger(label: "switchyard-tests")
    logger.logLevel = .warning
    return logger
}()

/// A pool on `url` with the Lars tables created.
public func makePool(_ url: String, _ configuration: PoolConfiguration = PoolConfiguration(minConnections: 0))
    async throws -> ConnectionPool
{
    let pool = try ConnectionPool(url: url, configuration: configuration, logger: quietLogger)
    try await RouteSchema.create(on: pool)
    return pool
}
