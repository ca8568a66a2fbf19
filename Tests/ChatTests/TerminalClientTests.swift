import Chat
import Foundation
import Reactor
import Synchronization
import Testing
import TestSupport
#if canImport(Glibc)
import Glibc
#endif

extension ChatSocketTests {
    @Suite("switchyard chat-client") struct TerminalClient {}
}

extension ChatSocketTests.TerminalClient {
    /// One conversation: the terminal client (stdin piped, not a terminal) against a library client.
    @Test(arguments: PollerKind.allCases)
    func pipedConversation(poller: PollerKind) async throws {
        let exe = switchyardExecutable()
        try #require(FileManager.default.isExecutableFile(atPath: exe), "build switchyard before the tests")
        let h = try await ChatHarness.start(poller: poller)
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
        let arguments = ["chat-client", "--port", "\(h.port)", "--linger", "0", "--poller", "\(poller)"]
        let output = try await runClient(exe, arguments, stdin: script)
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

    /// One conversation typed at a pseudo-terminal. The check that matters: a message that arrives while bob has
    /// half a line typed is printed above it, and the prompt with the half line is drawn again below.
    @Test(arguments: PollerKind.allCases)
    func terminalConversation(poller: PollerKind) async throws {
        let exe = switchyardExecutable()
        try #require(FileManager.default.isExecutableFile(atPath: exe), "build switchyard before the tests")
        let h = try await ChatHarness.start(poller: poller)
        let alice = try await h.user("alice")
        try await alice.join("lobby")
        let pty = try PseudoTerminal()
        defer { pty.close() }
        let original = try pty.slaveSettings()
        #expect(original.has(ICANON) && original.has(ECHO), "a fresh terminal is in canonical mode with echo")
        let arguments = ["chat-client", "--port", "\(h.port)", "--linger", "0", "--poller", "\(poller)"]
        let child = try TerminalChild(exe, arguments, terminal: pty)
        try await child.killedOnError {
            var at = try await pty.waitFor("connected to 127.0.0.1:\(h.port)")
            let raw = try pty.slaveSettings()
            #expect(!raw.has(ICANON) && !raw.has(ECHO) && raw.has(ISIG), "the client switched the terminal to raw")

            try pty.type("/register bob pw-bob\r")
            at = try await pty.waitFor("registered bob", after: at)
            try pty.type("/login bob pw-bob\r")
            at = try await pty.waitFor("logged in as bob", after: at)
            try pty.type("/join lobby\r")
            at = try await pty.waitFor("joined lobby (2 members)", after: at)
            try pty.type("hello from bob\r")
            at = try await pty.waitFor("[lobby #1] bob: hello from bob", after: at)
            try await nextEvent(alice, "bob's first line") { $0.isRoomMessage("hello from bob", from: "bob") }

            // Half a line, with a typo taken back and a left-arrow key in between (ignored): the echo shows it.
            try pty.type("hälf a lx\u{7F}\u{1B}[Di")
            at = try await pty.waitFor("> hälf a li", after: at)
            try await alice.say("hi bob", in: "lobby")
            at = try await pty.waitFor("[lobby #2] alice: hi bob\r\n> hälf a li", after: at)

            // The line is still being edited: finishing it sends the whole of it.
            try pty.type("ne\r")
            try await nextEvent(alice, "bob's finished line") { $0.isRoomMessage("hälf a line", from: "bob") }
            at = try await pty.waitFor("[lobby #3] bob: hälf a line", after: at)

            // Ctrl-U drops what was typed, so only /quit is left on the line.
            try pty.type("not to be sent\u{15}/quit\r")
            #expect(try await child.exitStatus() == 0, "\(pty.transcript)")
        }
        let restored = try pty.slaveSettings()
        #expect(restored.has(ICANON) && restored.has(ECHO), "the client restored the terminal settings")
        #expect(restored.c_lflag == original.c_lflag && restored.controlCharacters == original.controlCharacters)
        await h.stop([alice])
    }

    enum WayOut: String, CaseIterable, CustomStringConvertible {
        case controlD, sigint, sigterm
        var description: String { rawValue }
    }

    /// The terminal settings come back however the client ends: Ctrl-D on an empty line, SIGINT, SIGTERM.
    @Test(arguments: WayOut.allCases)
    func terminalSettingsAreRestored(leaving: WayOut) async throws {
        let exe = switchyardExecutable()
        try #require(FileManager.default.isExecutableFile(atPath: exe), "build switchyard before the tests")
        let h = try await ChatHarness.start(poller: .epoll)
        let pty = try PseudoTerminal()
        defer { pty.close() }
        let original = try pty.slaveSettings()
        let child = try TerminalChild(exe, ["chat-client", "--port", "\(h.port)", "--linger", "0"], terminal: pty)
        try await child.killedOnError {
            let at = try await pty.waitFor("connected to 127.0.0.1:\(h.port)")
            #expect(try !pty.slaveSettings().has(ICANON))
            switch leaving {
            case .controlD:
                // Ctrl-D with text on the line does nothing; on an empty line it quits.
                try pty.type("ab\u{04}")
                _ = try await pty.waitFor("> ab", after: at)
                try pty.type("\u{7F}\u{7F}\u{04}")
                #expect(try await child.exitStatus() == 0, "\(pty.transcript)")
            case .sigint:
                child.signal(SIGINT)
                #expect(try await child.exitStatus() == 128 + SIGINT, "\(pty.transcript)")
            case .sigterm:
                child.signal(SIGTERM)
                #expect(try await child.exitStatus() == 128 + SIGTERM, "\(pty.transcript)")
            }
        }
        let restored = try pty.slaveSettings()
        #expect(restored.c_lflag == original.c_lflag && restored.controlCharacters == original.controlCharacters,
                "the client left the terminal with other settings than it found")
        await h.stop()
    }
}

extension ChatEvent {
    func isRoomMessage(_ text: String, from sender: String) -> Bool {
        if case .roomMessage(let m) = self { return m.text == text && m.sender == sender }
        return false
    }
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
