import Foundation
import Reactor
import Testing
import TestSupport

/// `switchyard ARGS` on a thread of its own (the process is waited for without holding a task's thread).
private func switchyard(_ arguments: [String]) async throws -> (status: Int32, stdout: String, stderr: String) {
    try await runOnDedicatedThread(name: "test-cli") { Result { try runSwitchyard(arguments) } }.get()
}

private func errorLines(_ stderr: String) -> [Substring] { stderr.split(separator: "\n").filter { !$0.isEmpty } }

@Suite("db-agent and db-query commands", .timeLimit(.minutes(2)))
struct AgentCLITests {
    @Test("db-agent with a bad access file exits 1 with one line naming FILE:LINE")
    func badAccessFile() async throws {
        let file = temporaryFile("access", ".txt")
        try "# fine\nstatement a = SELECT 1\ntoken t rows=zero\n".write(to: file, atomically: true, encoding: .utf8)
        let result = try await switchyard(["db-agent", "--db", temporarySQLiteURL("cli"), "--port", "0",
                                           "--access", file.path])
        #expect(result.status == 1)
        let lines = errorLines(result.stderr)
        #expect(lines.count == 1, "\(result.stderr)")
        #expect(lines.first?.contains("access \(file.path):3: 'rows=zero'") == true, "\(result.stderr)")
        let missing = try await switchyard(["db-agent", "--port", "0", "--access", file.path + ".none"])
        #expect(missing.status == 1 && errorLines(missing.stderr).count == 1, "\(missing.stderr)")
        for bad in ["-1", "1000001"] {
            let poll = try await switchyard(["db-agent", "--db", temporarySQLiteURL("cli"), "--port", "0",
                                             "--access", file.path, "--busy-poll-us=\(bad)"])
            #expect(poll.status != 0 && poll.stderr.contains("--busy-poll-us must be 0...1000000, got \(bad)"),
                    "\(poll.stderr)")
        }
    }

    @Test("db-agent serves db-query: typed --param values in, a table and --json out; SIGTERM exits 0")
    func agentAndQuery() async throws {
        let access = temporaryFile("access", ".txt")
        try """
            statement put = INSERT INTO t (i, d, s, b, n) VALUES (?, ?, ?, ?, ?)
            statement get = SELECT i, d, s, b, n FROM t ORDER BY i
            token tok name=cli
            token admin sql
            """.write(to: access, atomically: true, encoding: .utf8)
        let db = temporarySQLiteURL("cli")
        let process = Process()
        process.executableURL = URL(fileURLWithPath: switchyardExecutable())
        process.arguments = ["db-agent", "--db", db, "--port", "0", "--access", access.path, "--loops", "1",
                             "--poller", "poll", "--busy-poll-us", "100"]
        let out = Pipe()
        process.standardOutput = out
        process.standardError = FileHandle.nullDevice
        try process.run()
        defer { if process.isRunning { process.terminate() } }
        let line = await runOnDedicatedThread(name: "test-read") { () -> String in
            var data = Data()
            while !data.contains(UInt8(ascii: "\n")) {
                let chunk = out.fileHandleForReading.availableData
                if chunk.isEmpty { break }
                data.append(chunk)
            }
            return String(decoding: data, as: UTF8.self)
        }
        #expect(line.hasPrefix("db-agent listening on 127.0.0.1:"), "\(line)")
        let port = line.split(separator: " ")[3].split(separator: ":")[1]
        let agent = "127.0.0.1:\(port)"
        let create = try await switchyard(["db-query", "--agent", agent, "--token", "admin", "--sql",
                                           "CREATE TABLE t (i INTEGER, d REAL, s TEXT, b BLOB, n TEXT)"])
        #expect(create.status == 0, "\(create.stderr)")
        let put = try await switchyard(["db-query", "--agent", agent, "--token", "tok", "--statement", "put",
                                        "--param", "7", "--param", "double:1.5", "--param", "text:alice o'hara",
                                        "--param", "blob:00ff10", "--param", "null"])
        #expect(put.status == 0 && put.stdout.contains("1 affected"), "\(put.stdout) \(put.stderr)")
        _ = try await switchyard(["db-query", "--agent", agent, "--token", "tok", "--statement", "put",
                                  "--param", "int:-3", "--param", "double:-2", "--param", "text:", "--param", "null",
                                  "--param", "text:x"])
        let table = try await switchyard(["db-query", "--agent", agent, "--token", "tok", "--statement", "get"])
        #expect(table.status == 0, "\(table.stderr)")
        let rows = table.stdout.split(separator: "\n", omittingEmptySubsequences: false)
        #expect(rows.first?.split(separator: "|").map { $0.trimmingCharacters(in: .whitespaces) }
            == ["i", "d", "s", "b", "n"], "\(table.stdout)")
        #expect(rows.count >= 5 && rows[1].allSatisfy { $0 == "-" || $0 == "+" })
        #expect(rows[2].split(separator: "|").map { $0.trimmingCharacters(in: .whitespaces) }
            == ["-3", "-2.0", "", "NULL", "x"], "\(table.stdout)")
        #expect(rows[3].split(separator: "|").map { $0.trimmingCharacters(in: .whitespaces) }
            == ["7", "1.5", "alice o'hara", "x'00ff10'", "NULL"], "\(table.stdout)")
        #expect(table.stdout.contains("(2 rows)"))
        let json = try await switchyard(["db-query", "--agent", agent, "--token", "tok", "--statement", "get",
                                         "--json"])
        #expect(json.status == 0, "\(json.stderr)")
        let object = try JSONSerialization.jsonObject(with: Data(json.stdout.utf8)) as? [String: Any]
        #expect(object?["columns"] as? [String] == ["i", "d", "s", "b", "n"])
        let first = (object?["rows"] as? [[Any]])?.last
        #expect(first?[0] as? Int == 7 && first?[1] as? Double == 1.5 && first?[2] as? String == "alice o'hara")
        #expect((first?[3] as? [String: String])?["blob"] == "00ff10" && first?[4] is NSNull)
        #expect(object?["truncated"] as? Bool == false)
        // A refused request: exit 1, one line with the agent's reason.
        let refused = try await switchyard(["db-query", "--agent", agent, "--token", "tok", "--sql", "SELECT 1"])
        #expect(refused.status == 1 && errorLines(refused.stderr).count == 1, "\(refused.stderr)")
        #expect(refused.stderr.contains("sqlNotAllowed"))
        process.terminate()
        await runOnDedicatedThread(name: "test-wait") { process.waitUntilExit() }
        #expect(process.terminationReason == .exit && process.terminationStatus == 0)
    }

    @Test("a bad --param exits 1 with one line, before connecting", arguments: [
        "alice", "blob:abc", "blob:zz", "int:1.5", "double:", "double:x", "date:2020-01-01", "int:99999999999999999999",
    ])
    func badParam(param: String) async throws {
        let result = try await switchyard(["db-query", "--agent", "127.0.0.1:1", "--token", "t", "--statement", "s",
                                           "--param", param])
        #expect(result.status == 1)
        let lines = errorLines(result.stderr)
        #expect(lines.count == 1 && lines.first?.contains("bad parameter") == true, "\(result.stderr)")
    }
}
