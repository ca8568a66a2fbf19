import DatabaseAgent
import Logging
import Reactor
import Storage
import Synchronization

/// Database agents started in this test process, in front of fresh SQLite files: ``TestDatabase/agent``'s URLs.
public enum TestAgent {
    /// The token of the agents' access file (`sql`: the agent:// driver sends SQL text).
    public static let token = "test-agent-token"

    /// What an agent needs alive; kept until the process ends (the tests do not stop the agents they share).
    private static let running = Mutex<[(EventLoopGroup, ConnectionPool, DatabaseAgentServer)]>([])

    /// Starts an agent (one loop, a pool of 8) in front of `backing` on 127.0.0.1, port 0, and returns the
    /// `agent://` URL of it. Not on a loop thread.
    public static func start(backing: String = temporarySQLiteURL("agent")) throws -> String {
        var logger = Logger(label: "switchyard-tests.agent")
        logger.logLevel = .warning
        let group = try EventLoopGroup(ioLoops: 1, configuration: LoopConfiguration(poller: .epoll),
                                       placement: .roundRobin)
        let pool = try ConnectionPool(url: backing, configuration: PoolConfiguration(minConnections: 0),
                                      logger: logger)
        let rules = try AccessFile.parse("token \(token) sql name=tests")
        let agent = DatabaseAgentServer(
            group: group,
            configuration: DatabaseAgentConfiguration(server: ServerConfiguration(port: 0, maxConnections: 256)),
            rules: rules, pool: pool, logger: logger)
        let address = try agent.start()
        running.withLock { $0.append((group, pool, agent)) }
        return "agent://127.0.0.1:\(address.port)?token=\(token)"
    }
}
