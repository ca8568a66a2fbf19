@testable import DatabaseAgent
import Foundation
import LarsWire
import Logging
import Messaging
import Reactor
import Storage
import SwiftProtobuf
import TestSupport

/// An agent on a fresh SQLite file with a table `t (id INTEGER PRIMARY KEY, i, d, s, b, n)` and `n` rows in `big`
/// (`k` from 0), served on port 0 by a group of the given poller.
final class RunningAgent: Sendable {
    static let access = """
        # statements of the tests
        statement insert_t = INSERT INTO t (i, d, s, b, n) VALUES (?, ?, ?, ?, ?)
        statement select_t = SELECT i, d, s, b, n FROM t ORDER BY id
        statement count_t = SELECT COUNT(*) AS c FROM t
        statement big = SELECT k, 'row ' || k AS label FROM big ORDER BY k
        statement insert_pk = INSERT INTO t (id, s) VALUES (?, ?)
        statement slow = SELECT COUNT(*) FROM big a, big b, big c
        token admin sql name=admin
        token app statements=insert_t,select_t,count_t,big,insert_pk name=app
        token capped statements=big rows=7 name=capped
        token slowpoke rate=3 name=slowpoke
        """

    let group: EventLoopGroup
    let pool: ConnectionPool
    let agent: DatabaseAgentServer
    let port: Int
    let logs: Shared<[CapturedLog]>

    init(poller: PollerKind, bigRows: Int = 1000, configuration: DatabaseAgentConfiguration = .init(port0: ()))
        async throws
    {
        let logs = Shared<[CapturedLog]>([])
        self.logs = logs
        let logger = CapturingLogHandler.logger(into: logs, level: .info)
        group = try EventLoopGroup(ioLoops: 2, configuration: LoopConfiguration(poller: poller),
                                   placement: .roundRobin)
        pool = try ConnectionPool(url: temporarySQLiteURL("dbagent"),
                                  configuration: PoolConfiguration(maxConnections: 4), logger: logger)
        try await pool.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, i INTEGER, d REAL, s TEXT, b BLOB, n TEXT)", [])
        try await pool.execute("CREATE TABLE big (k INTEGER PRIMARY KEY)", [])
        if bigRows > 0 {
            try await pool.execute("""
                WITH RECURSIVE c(x) AS (SELECT 0 UNION ALL SELECT x + 1 FROM c WHERE x + 1 < ?)
                INSERT INTO big (k) SELECT x FROM c
                """, [.integer(Int64(bigRows))])
        }
        agent = DatabaseAgentServer(group: group, configuration: configuration,
                                    rules: try AccessFile.parse(Self.access), pool: pool, logger: logger)
        let group = group
        let agent = agent
        port = Int(try await runOnDedicatedThread(name: "test-agent-start") { Result { try agent.start() } }.get().port)
        _ = group
    }

    func client(token: String = "app") async throws -> DatabaseAgentClient {
        try await DatabaseAgentClient.connect(port: port, token: token, loop: group.next())
    }

    func frames() async throws -> AsyncFrameClient {
        try await AsyncFrameClient.connect(port: port, loop: group.next())
    }

    func stop() async {
        let agent = agent
        await runOnDedicatedThread(name: "test-agent-stop") { agent.shutdown() }
        await pool.close()
        await group.shutdown()
    }
}

extension DatabaseAgentConfiguration {
    /// The defaults on port 0.
    init(port0: ()) {
        self.init(server: ServerConfiguration(port: 0, maxConnections: 64))
    }
}

extension AsyncFrameClient {
    func send(execute statement: AgentStatement, id: UInt64, token: String, batchRows: Int = 0) async throws {
        let request = AgentResult.executeMessage(id: id, token: token, statement: statement, rowLimit: 0,
                                                 timeout: nil, batchRows: batchRows)
        try await send(request, id: DatabaseAgentMessageID.execute)
    }

    /// The next frame, within 10 s.
    func nextFrame(_ iterator: inout AsyncFrameClient.Frames.AsyncIterator) async throws -> InboundFrame? {
        try await iterator.next()
    }
}

/// A frame's kind for assertions.
func kind(_ frame: InboundFrame?) -> String {
    switch frame?.messageID {
    case DatabaseAgentMessageID.columns.rawValue?: return "columns"
    case DatabaseAgentMessageID.rows.rawValue?: return "rows"
    case DatabaseAgentMessageID.done.rawValue?: return "done"
    case DatabaseAgentMessageID.error.rawValue?:
        let e = try? frame.map { try Switchyard_Dbagent_Error(serializedBytes: $0.body) }
        return "error:\(e?.kind.rawValue ?? -1)"
    case nil: return "closed"
    default: return "other"
    }
}
