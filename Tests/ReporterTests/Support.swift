import Foundation
import Logging
import Messaging
import Reactor
import RouteTestSupport
import Reporter
import RouteStore
import ServiceLifecycle
import Storage
import Testing
import TestSupport

/// Every socket suite of this target nests here, so they run one at a time (the writer tasks and the pools'
/// threads share the machine's few cores).
@Suite("Reporter over real sockets", .serialized)
enum ReporterSocketTests {}

/// A reporter on a fresh group and port 0, run in a `ServiceGroup` as the CLI runs it; `stop()` shuts the group
/// down gracefully (the reporter stops accepting and writes what is queued) and returns how long that took.
final class RunningReporter: Sendable {
    let group: EventLoopGroup
    let reporter: Reporter
    let port: Int
    private let services: ServiceGroup
    private let task: Task<Void, any Error>

    init(pool: ConnectionPool, logger: Logger = quietLogger, poller: PollerKind = .epoll,
         _ configuration: ReporterConfiguration) async throws {
        group = try EventLoopGroup(ioLoops: 1, configuration: LoopConfiguration(poller: poller))
        var configuration = configuration
        configuration.port = 0
        let reporter = Reporter(group: group, configuration: configuration, pool: pool, logger: logger)
        self.reporter = reporter
        port = Int(try reporter.start().port)
        let services = ServiceGroup(services: [reporter], logger: logger)
        self.services = services
        task = Task { try await services.run() }
    }

    /// A client connected to the reporter on the group's loop.
    func client() async throws -> AsyncFrameClient {
        try await AsyncFrameClient.connect(port: port, loop: group.next())
    }

    /// Graceful shutdown of the reporter's group, then of the loops. Returns how long the reporter took to stop.
    @discardableResult
    func stop() async -> Duration {
        let start = ContinuousClock.now
        await services.triggerGracefulShutdown()
        if case .failure(let error) = await task.result { Issue.record("the group threw \(error)") }
        let took = ContinuousClock.now - start
        await group.shutdown()
        return took
    }
}
