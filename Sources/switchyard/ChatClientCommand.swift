#if canImport(Glibc)
import Glibc
#endif
import ArgumentParser
import Chat
import Dispatch
import Reactor

struct ChatClientCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "chat-client",
        abstract: "A terminal chat client (scriptable: reads commands from stdin, one per line).",
        discussion: """
            Commands: /register NAME PASSWORD, /login NAME PASSWORD, /join ROOM, /leave, /rooms, /msg USER TEXT,
            /friend NAME, /friends, /quit. Any other line goes to the current room. Incoming messages are printed as
            they arrive. When stdin ends, the client waits --linger seconds for what is still coming, then quits.
            On a terminal, incoming messages are printed above the line being typed, which stays as it was;
            Backspace, Ctrl-U (clear the line), Enter; Ctrl-D on an empty line quits.
            """
    )

    @Option(help: "Server address.") var host = "127.0.0.1"
    @Option(help: "Server port.") var port = 7790
    @Option(help: "Seconds between heartbeats.") var heartbeat = 5
    @Option(help: "Seconds to keep printing incoming messages after stdin ends.") var linger = 1.0
    @Option(help: "I/O multiplexer: epoll, poll or select.") var poller: PollerKind = .epoll

    func validate() throws {
        guard (1...65535).contains(port) else { throw ValidationError("--port must be 1...65535, got \(port)") }
        guard heartbeat > 0 else { throw ValidationError("--heartbeat must be positive") }
        guard linger >= 0 else { throw ValidationError("--linger must be >= 0") }
    }

    func run() async throws {
        let group = try EventLoopGroup(ioLoops: 1, configuration: LoopConfiguration(poller: poller))
        do {
            try await converse(on: group)
        } catch {
            await group.shutdown()
            throw error
        }
        await group.shutdown()
    }

    /// Connects, then reads commands until /quit, the end of input or the connection's end.
    private func converse(on group: EventLoopGroup) async throws {
        // On a terminal the client reads keys itself (see `Console`); the settings go back on every way out:
        // the defer below for returns and errors, the signal handler for Ctrl-C and kill.
        let terminal = isatty(0) != 0 ? RawTerminal.enter(fd: 0) : nil
        defer { terminal?.restore() }
        let console = Console(interactive: terminal != nil)
        defer { console.close() }
        let signals = try terminal.map { terminal in
            try TerminationSignals(loop: group.acceptorLoop) { signo in
                console.close()
                terminal.restore()
                Glibc.exit(128 + signo)
            }
        }
        defer { signals?.uninstall() }
        let client: ChatClient
        do {
            client = try await ChatClient.connect(host: host, port: port, loop: group.next(),
                                                  heartbeatInterval: .seconds(heartbeat))
        } catch {
            throw CommandFailure("chat-client: cannot connect to \(host):\(port): \(error)")
        }
        console.show("connected to \(host):\(port); /register, /login, /join ROOM, then type to talk (/quit to leave)")
        let printer = Task {
            for await event in client.events { console.show(Self.render(event)) }
            console.show("* disconnected")
        }
        var session = Session()
        let input = terminal == nil ? Self.stdinLines() : Self.terminalLines(console)
        lines: for await line in input {
            let trimmed = line.trimmingSpaces()
            if trimmed.isEmpty { continue }
            do {
                if try await handle(trimmed, client: client, session: &session, console: console) == .quit { break lines }
            } catch let error as ChatClientError {
                console.show("error: \(error)")
                if error == .closed { break lines }
            } catch {
                console.show("error: \(error)")
            }
        }
        if linger > 0 { try? await Task.sleep(for: .milliseconds(Int(linger * 1000))) }
        await client.close()
        await printer.value
    }

    struct Session {
        var room: String?
    }

    enum Outcome { case next, quit }

    private func handle(_ line: String, client: ChatClient, session: inout Session, console: Console) async throws
        -> Outcome
    {
        guard line.hasPrefix("/") else {
            guard let room = session.room else {
                console.show("error: join a room first (/join ROOM)")
                return .next
            }
            try await client.say(line, in: room)
            return .next
        }
        let parts = line.split(separator: " ", maxSplits: 2, omittingEmptySubsequences: true).map(String.init)
        let command = parts[0]
        func arg(_ i: Int) -> String? { parts.count > i ? parts[i] : nil }
        switch command {
        case "/register":
            guard let name = arg(1), let password = arg(2) else { console.show("usage: /register NAME PASSWORD"); break }
            try await client.register(name: name, password: password)
            console.show("registered \(name)")
        case "/login":
            guard let name = arg(1), let password = arg(2) else { console.show("usage: /login NAME PASSWORD"); break }
            try await client.login(name: name, password: password)
            console.show("logged in as \(name)")
        case "/join":
            guard let room = arg(1) else { console.show("usage: /join ROOM"); break }
            let joined = try await client.join(room)
            session.room = joined.room
            console.show("joined \(joined.room) (\(joined.memberCount) members)")
            for m in joined.history { console.show("  [\(m.room) #\(m.sequence)] \(m.sender): \(m.text)") }
        case "/leave":
            guard let room = arg(1) ?? session.room else { console.show("not in a room"); break }
            try await client.leave(room)
            if session.room == room { session.room = nil }
            console.show("left \(room)")
        case "/rooms":
            let rooms = try await client.rooms()
            if rooms.isEmpty { console.show("no rooms") }
            for r in rooms { console.show("  \(r.name) (\(r.memberCount) members)") }
        case "/msg":
            guard let user = arg(1), let text = arg(2) else { console.show("usage: /msg USER TEXT"); break }
            try await client.msg(to: user, text)
        case "/friend":
            guard let name = arg(1) else { console.show("usage: /friend NAME"); break }
            try await client.addFriend(name)
            console.show("\(name) is now a friend")
        case "/friends":
            let friends = try await client.friends()
            if friends.isEmpty { console.show("no friends yet (/friend NAME)") }
            for f in friends { console.show("  \(f.name) (\(f.online ? "online" : "offline"))") }
        case "/quit":
            return .quit
        default:
            console.show("unknown command \(command); try /register /login /join /leave /rooms /msg /friend /friends /quit")
        }
        return .next
    }

    static func render(_ event: ChatEvent) -> String {
        switch event {
        case .roomMessage(let m): return "[\(m.room) #\(m.sequence)] \(m.sender): \(m.text)"
        case .privateMessage(let m): return "[pm] \(m.from): \(m.text)"
        case .presence(let user, let online): return "* \(user) is \(online ? "online" : "offline")"
        case .notice(let status): return "! \(status.reason)"
        }
    }

    /// Lines typed at the terminal (raw mode): keys are read on a thread of their own and edited by `console`.
    /// Ends on Ctrl-D on an empty line, at end of input, or on a read error.
    static func terminalLines(_ console: Console) -> AsyncStream<String> {
        AsyncStream { continuation in
            DispatchQueue.global().async {
                var buffer = [UInt8](repeating: 0, count: 256)
                reading: while true {
                    let n = buffer.withUnsafeMutableBytes { read(0, $0.baseAddress, $0.count) }
                    if n < 0 && errno == EINTR { continue }
                    if n <= 0 { break }
                    for input in console.type(buffer[..<n]) {
                        switch input {
                        case .line(let line): continuation.yield(line)
                        case .endOfInput: break reading
                        }
                    }
                }
                continuation.finish()
            }
        }
    }

    /// Lines of stdin, read on a thread of their own (readLine blocks).
    static func stdinLines() -> AsyncStream<String> {
        AsyncStream { continuation in
            DispatchQueue.global().async {
                while let line = readLine(strippingNewline: true) { continuation.yield(line) }
                continuation.finish()
            }
        }
    }
}

private extension String {
    func trimmingSpaces() -> String {
        var s = Substring(self)
        while let f = s.first, f == " " || f == "\t" || f == "\r" { s.removeFirst() }
        while let l = s.last, l == " " || l == "\t" || l == "\r" { s.removeLast() }
        return String(s)
    }
}
