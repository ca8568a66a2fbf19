import Chat
import Foundation
import Synchronization
import Testing

extension ChatSocketTests {
    @Suite("switchyard chat-client") struct TerminalClient {}
}

extension ChatSocketTests.TerminalClient {
    /// One conversation: the terminal client (stdin piped, not a terminal) against a library client.
    @Test func pipedConversation() async throws {
        let exe = switchyardExecutable()
        try #require(FileManager.default.isExecutableFile(atPath: exe), "build switchyard before the tests")
        let h = try await ChatHarness.start()
        let alice = try await h.user("alice")
        try await alice.join("lobby")
        let script = """
            /register bob pw-bob
            /login bob pw-bob
            /join lobby
            hello from bob
            /rooms
            /msg alice psst
            /friend alice
            /friends
            /leave
            /quit

            """
        // Alice answers in the room once she has bob's line; bob's client prints it while it lingers.
        let answer = Task {
            _ = try await nextEvent(alice, timeout: 30, "bob's line") {
                if case .roomMessage(let m) = $0 { return m.text == "hello from bob" }
                return false
            }
            try await alice.say("hi bob", in: "lobby")
        }
        let output = try await runClient(exe, ["chat-client", "--port", "\(h.port)", "--linger", "0"], stdin: script)
        if case .failure(let error) = await answer.result {
            Issue.record("alice did not get bob's line: \(error); the client printed:\n\(output)")
        }
        #expect(output.contains("registered bob"))
        #expect(output.contains("logged in as bob"))
        #expect(output.contains("joined lobby (2 members)"))
        #expect(output.contains("[lobby #1] bob: hello from bob"))
        #expect(output.contains("lobby (2 members)"))
        #expect(output.contains("alice (online)"))
        #expect(output.contains("[lobby #2] alice: hi bob"), "\(output)")
        await h.stop([alice])
    }
}

func switchyardExecutable() -> String {
    let exe = URL(fileURLWithPath: "/proc/self/exe").resolvingSymlinksInPath()
    var dir = exe.deletingLastPathComponent()
    for _ in 0..<4 {
        let candidate = dir.appendingPathComponent("switchyard").path
        if FileManager.default.isExecutableFile(atPath: candidate) { return candidate }
        dir = dir.deletingLastPathComponent()
    }
    return dir.appendingPathComponent("switchyard").path
}

/// Runs the client with its stdin a pipe: the script up to `/leave` goes in at once; the rest only once alice's
/// answer is printed (the conversation needs it), then stdin is closed. Returns stdout; the process is killed
/// after 60 s, which also ends the wait for the answer.
func runClient(_ exe: String, _ arguments: [String], stdin script: String) async throws
    -> String
{
    try await withCheckedThrowingContinuation { (c: CheckedContinuation<String, Error>) in
        Thread.detachNewThread {
            let process = Process()
            process.executableURL = URL(fileURLWithPath: exe)
            process.arguments = arguments
            let input = Pipe()
            let out = Pipe()
            process.standardInput = input
            process.standardOutput = out
            process.standardError = FileHandle.nullDevice
            do { try process.run() } catch { return c.resume(throwing: error) }
            let killer = DispatchWorkItem { if process.isRunning { process.terminate() } }
            DispatchQueue.global().asyncAfter(deadline: .now() + 60, execute: killer)
            let lines = script.split(separator: "\n", omittingEmptySubsequences: false)
            let (before, after) = (lines.prefix { $0 != "/leave" }, lines.drop { $0 != "/leave" })
            input.fileHandleForWriting.write(Data((before.joined(separator: "\n") + "\n").utf8))
            // Read until alice's answer shows up, then send the rest and read to the end.
            var collected = Data()
            let reader = out.fileHandleForReading
            while !String(decoding: collected, as: UTF8.self).contains("alice: hi bob") {
                let chunk = reader.availableData
                if chunk.isEmpty { break }
                collected.append(chunk)
            }
            input.fileHandleForWriting.write(Data(after.joined(separator: "\n").utf8))
            try? input.fileHandleForWriting.close()
            collected.append(reader.readDataToEndOfFile())
            process.waitUntilExit()
            killer.cancel()
            c.resume(returning: String(decoding: collected, as: UTF8.self))
        }
    }
}
