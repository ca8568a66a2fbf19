import Foundation
import Testing
import TestSupport

@Suite("switchyard CLI: failures exit non-zero with one line; bench results as JSON")
struct CLITests {
    @Test("a server command on a port already taken exits 1 and names the address", arguments: [
        ["echo"], ["bench", "framed-echo-server"],
    ])
    func portTaken(command: [String]) throws {
        let listener = try boundLoopbackSocket(listenBacklog: 1)
        defer { close(listener.fd) }
        let port = Int(listener.port)
        let result = try runSwitchyard(command + ["--port", "\(port)"])
        #expect(result.status == 1)
        #expect(result.stdout.isEmpty, "nothing announced: \(result.stdout)")
        let lines = result.stderr.split(separator: "\n").filter { $0.hasPrefix("Error:") }
        #expect(lines.count == 1)
        #expect(lines.first?.contains("\(command[command.count - 1]): cannot listen on 127.0.0.1:\(port)") == true,
                "stderr: \(result.stderr)")
    }

    @Test("a server stopped by SIGTERM right after its address line shuts down gracefully and exits 0")
    func sigtermRightAfterTheAnnounce() throws {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: switchyardExecutable())
        process.arguments = ["echo", "--port", "0", "--threads", "1"]
        let line = try firstLine(of: process)
        #expect(line.hasPrefix("echo listening on 127.0.0.1:"))
        process.terminate()  // SIGTERM
        process.waitUntilExit()
        #expect(process.terminationReason == .exit && process.terminationStatus == 0)
    }

    @Test("proxy: bad routes and flags exit non-zero with one line naming the problem", arguments: [
        ([], "at least one route"),
        (["--route", "80:1"], "--route must be PORT:MODID:CMDID"),
        (["--port", "0", "--modid", "1"], "--port, --modid and --cmdid go together"),
        (["--route", "0:1:1", "--agent-ports", "a,b"], "--agent-ports"),
        (["--route", "0:1:1", "--splice", "maybe"], "--splice must be auto, on or off"),
        (["--route", "0:1:1", "--connect-attempts", "0"], "connect attempts"),
        (["--route", "0:1:1", "--affinity", "cookie"], "affinity"),
        (["--route", "0:1:1", "--busy-poll-us", "2000000"], "--busy-poll-us must be 0...1000000"),
    ])
    func proxyBadFlags(arguments: [String], message: String) throws {
        let result = try runSwitchyard(["proxy"] + arguments)
        #expect(result.status != 0)
        let lines = result.stderr.split(separator: "\n").filter { $0.hasPrefix("Error:") }
        #expect(lines.count == 1, "stderr: \(result.stderr)")
        #expect(result.stderr.contains(message), "stderr: \(result.stderr)")
    }

    @Test("bench dbagent: bad flags exit non-zero with one line naming the problem", arguments: [
        (["--loops", "0"], "--loops must be 1...64"),
        (["--client-loops", "0"], "--client-loops must be 1...64"),
        (["--client-loops", "65"], "--client-loops must be 1...64"),
        (["--callers", "0"], "--callers must be 1...10000"),
        (["--busy-poll-us", "2000000"], "--busy-poll-us must be 0...1000000"),
    ])
    func dbagentBenchBadFlags(arguments: [String], message: String) throws {
        let result = try runSwitchyard(["bench", "dbagent", "--db", "postgres://u:p@127.0.0.1:1/db"] + arguments)
        #expect(result.status != 0)
        let lines = result.stderr.split(separator: "\n").filter { $0.hasPrefix("Error:") }
        #expect(lines.count == 1, "stderr: \(result.stderr)")
        #expect(result.stderr.contains(message), "stderr: \(result.stderr)")
    }

    @Test("proxy on a port already taken exits 1 and names the address; SIGTERM after the announce exits 0")
    func proxyListen() throws {
        let listener = try boundLoopbackSocket(listenBacklog: 1)
        defer { close(listener.fd) }
        let taken = try runSwitchyard(["proxy", "--host", "127.0.0.1", "--route", "\(listener.port):1:1"])
        #expect(taken.status == 1)
        let lines = taken.stderr.split(separator: "\n").filter { $0.hasPrefix("Error:") }
        #expect(lines.count == 1 && lines[0].contains("proxy: cannot listen on 127.0.0.1"), "\(taken.stderr)")
        let process = Process()
        process.executableURL = URL(fileURLWithPath: switchyardExecutable())
        process.arguments = ["proxy", "--host", "127.0.0.1", "--route", "0:1:1", "--drain-timeout", "1"]
        let line = try firstLine(of: process)
        #expect(line.hasPrefix("proxy listening on 127.0.0.1:"))
        process.terminate()
        process.waitUntilExit()
        #expect(process.terminationReason == .exit && process.terminationStatus == 0)
    }

    @Test("bench qps --json prints one JSON object with the message count")
    func qpsJSON() throws {
        let result = try runSwitchyard(["bench", "qps", "--seconds", "1", "--connections", "2", "--json"])
        #expect(result.status == 0, "stderr: \(result.stderr)")
        let last = try #require(result.stdout.split(separator: "\n").last)
        let object = try #require(try JSONSerialization.jsonObject(with: Data(last.utf8)) as? [String: Any])
        #expect((object["messages"] as? Int ?? 0) > 0)
        #expect((object["per_second"] as? [Int])?.count == 1)
        #expect(object["connections"] as? Int == 2)
    }
}

/// Starts `process` with stdout to a pipe (stderr discarded) and returns its first line of output.
private func firstLine(of process: Process) throws -> String {
    let out = Pipe()
    process.standardOutput = out
    process.standardError = FileHandle.nullDevice
    try process.run()
    var line = Data()
    while !line.contains(UInt8(ascii: "\n")) {
        let chunk = out.fileHandleForReading.availableData
        if chunk.isEmpty { break }
        line.append(chunk)
    }
    return String(decoding: line, as: UTF8.self)
}
