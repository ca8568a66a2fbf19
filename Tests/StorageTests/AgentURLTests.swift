@testable import Storage
import Testing

/// The agent:// driver's pure parts (its socket tests are in DatabaseAgentTests, next to the agent).
@Suite("agent:// URLs and transaction statements")
struct AgentURLTests {
    @Test("URLs: agent://HOST:PORT?token=T parses; no token is a bad URL; the token never shows")
    func urls() throws {
        let url = try DatabaseURL("agent://10.0.0.7:7801?token=s3cret&dialect=postgres")
        #expect(url.driver == .agent && url.host == "10.0.0.7" && url.port == 7801)
        #expect(url.options["token"] == "s3cret")
        #expect(!url.description.contains("s3cret") && url.description.hasPrefix("agent://10.0.0.7:7801"))
        #expect(try DatabaseURL("agent://h?token=t").port == 7795)
        #expect(throws: StorageError.self) { try DatabaseURL("agent://127.0.0.1:7795") }
        #expect(throws: StorageError.self) { try DatabaseURL("agent://127.0.0.1:7795?token=t&dialect=oracle") }
        #expect(DatabaseURL.redact("agent://h:1?token=abc&x=1") == "agent://h:1?token=***&x=1")
        #expect(AgentDriverConnection.transactionAction("BEGIN IMMEDIATE") == .begin)
        #expect(AgentDriverConnection.transactionAction(" start  transaction; ") == .begin)
        #expect(AgentDriverConnection.transactionAction("COMMIT") == .commit)
        #expect(AgentDriverConnection.transactionAction("rollback") == .rollback)
        #expect(AgentDriverConnection.transactionAction("ROLLBACK TO SAVEPOINT a") == nil)
        #expect(AgentDriverConnection.transactionAction("SELECT 1") == nil)
    }
}
