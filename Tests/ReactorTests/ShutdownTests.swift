import EchoServer
import Dispatch
import Foundation
import Reactor
import Synchronization
import Testing
import TestSupport

#if canImport(Glibc)
import Glibc
#endif

@Suite("Graceful shutdown", .serialized)
struct ShutdownTests {
    /// A server whose onConnect queues `payload` for a client that does not read yet.
    private func withPushingServer(
        poller: PollerKind, payload: [UInt8], closes: EventCounter,
        _ body: (TCPServer, UInt16, BlockingSocket, TCPConnection) throws -> Void
    ) throws {
        let connection = Shared<TCPConnection?>(nil)
        let connects = EventCounter()
        let group = try EventLoopGroup(ioLoops: 1, configuration: LoopConfiguration(poller: poller))
        defer { group.shutdown() }
        let server = TCPServer(
            group: group, configuration: ServerConfiguration(port: 0),
            callbacks: ConnectionCallbacks(
                onConnect: { c in
                    c.send(payload)
                    connection.set(c)
                    connects.signal()
                },
                onClose: { _ in closes.signal() }))
        let port = try server.start().port
        defer { server.shutdown(timeout: .seconds(1)) }  // no-op when the test already shut it down
        let client = try BlockingSocket(port: port)
        defer { client.close() }
        client.setReceiveTimeout(seconds: 20)
        #expect(connects.wait(for: 1))
        let conn = try #require(connection.get())
        try body(server, port, client, conn)
    }

    @Test("shutdown flushes queued output: a client that reads late gets all 4 MiB, then EOF",
          arguments: PollerKind.allCases)
    func shutdownFlushes(poller: PollerKind) throws {
        let payload = randomBytes(4 << 20)
        let closes = EventCounter()
        try withPushingServer(poller: poller, payload: payload, closes: closes) { server, port, client, conn in
            // The socket buffers cannot take 4 MiB the client does not read: the rest waits in the server's queue.
            let queued = try onLoop(conn.loop) { conn.queuedOutputBytes }
            #expect(queued > 0, "nothing queued: the test would not show a flush")

            let shutdownDone = EventCounter()
            let shutdownSeconds = Shared<Double>(-1)
            Thread {
                let start = Date()
                server.shutdown(timeout: .seconds(30))
                shutdownSeconds.set(Date().timeIntervalSince(start))
                shutdownDone.signal()
            }.start()
            // The server has started closing (it closes the listener first, then the connections).
            #expect(try eventually { try onLoop(conn.loop) { !conn.isActive } })
            #expect(shutdownDone.count == 0, "shutdown returned before the queued output was read")

            let received = try client.receiveUntilClose()
            #expect(received.count == payload.count)
            #expect(received == payload)
            client.shutdownWrite()  // our FIN lets the server finish its close at once
            #expect(shutdownDone.wait(for: 1, timeout: 30))
            #expect(shutdownSeconds.get() < 30, "shutdown only finished through its timeout")
            #expect(closes.wait(for: 1))
            #expect(closes.count == 1)
            #expect(server.connectionCount == 0)
            #expect(throws: (any Error).self, "the server still accepts after shutdown") {
                try BlockingSocket(port: port).close()
            }
        }
    }

    @Test("shutdown waits at most its timeout for a client that never reads, then closes",
          arguments: PollerKind.allCases)
    func shutdownTimeoutIsBounded(poller: PollerKind) throws {
        let payload = randomBytes(4 << 20)
        let closes = EventCounter()
        try withPushingServer(poller: poller, payload: payload, closes: closes) { server, _, client, conn throws in
            #expect(try onLoop(conn.loop) { conn.queuedOutputBytes } > 0)
            let start = Date()
            server.shutdown(timeout: .milliseconds(300))
            let elapsed = Date().timeIntervalSince(start)
            #expect(elapsed >= 0.3)
            #expect(elapsed < 5)
            #expect(closes.wait(for: 1))
            #expect(server.connectionCount == 0)
            // The client gets what fit in the socket buffers, then the connection ends: never more than was sent.
            let received = (try? client.receiveUntilClose()) ?? []
            #expect(received.count < payload.count)
            #expect(Array(payload.prefix(received.count)) == received)
        }
    }

    @Test("a server shut down after its group returns at once: the listener is closed, nothing waits on dead loops",
          arguments: PollerKind.allCases)
    func serverShutdownAfterGroup(poller: PollerKind) throws {
        let group = try EventLoopGroup(ioLoops: 1, configuration: LoopConfiguration(poller: poller),
                                       placement: .roundRobin)
        let connects = EventCounter()
        let server = TCPServer(
            group: group, configuration: ServerConfiguration(port: 0),
            callbacks: ConnectionCallbacks(onConnect: { _ in connects.signal() }))
        let port = try server.start().port
        let client = try BlockingSocket(port: port)
        defer { client.close() }
        #expect(connects.wait(for: 1))
        group.shutdown()
        // Before, this waited forever for a task the stopped acceptor loop would never run.
        let done = EventCounter()
        Thread {
            server.shutdown(timeout: .seconds(30))
            done.signal()
        }.start()
        #expect(done.wait(for: 1, timeout: 20), "TCPServer.shutdown() hung on a stopped group")
        // The listening socket is closed: a new client is refused.
        #expect(throws: POSIXError.self) { _ = try BlockingSocket(port: port) }
    }

    @Test("a server released without shutdown stops listening; a client arriving meanwhile is closed, not a crash",
          arguments: PollerKind.allCases)
    func serverReleasedWithoutShutdown(poller: PollerKind) async {
        await #expect(processExitsWith: .success) { [name = poller.rawValue as String] in
            let group = try EventLoopGroup(
                ioLoops: 1, configuration: LoopConfiguration(poller: PollerKind(rawValue: name)!),
                placement: .roundRobin)
            defer { group.shutdown() }
            var server: TCPServer? = TCPServer(
                group: group, configuration: ServerConfiguration(port: 0), callbacks: EchoService.callbacks())
            let port = try server!.start().port
            let served = try BlockingSocket(port: port, receiveTimeout: 10)
            try served.sendAll([1])
            #expect(try served.receive(exactly: 1) == [1])
            served.close()
            #expect(eventually { server!.connectionCount == 0 })
            server = nil
            // Refused once the listener is closed; a client that comes before is accepted and closed at once.
            #expect(eventually {
                guard let s = try? BlockingSocket(port: port) else { return true }
                s.close()
                return false
            })
        }
    }

    @Test("switchyard-echo exits 0 on SIGTERM and closes its idle clients cleanly", arguments: PollerKind.allCases)
    func echoExitsZeroOnSIGTERM(poller: PollerKind) throws {
        let child = try ChildServer(arguments: ["--port", "0", "--threads", "1", "--poller", poller.rawValue,
                                               "--log-level", "error"])
        defer { _ = child.stop(within: 5) }
        let client = try BlockingSocket(port: child.port)
        defer { client.close() }
        client.setReceiveTimeout(seconds: 10)
        try client.sendAll(Array("ping".utf8))
        #expect(try client.receive(exactly: 4) == Array("ping".utf8))

        kill(child.pid, SIGTERM)
        // The server closes the idle connection gracefully: a clean EOF, no reset.
        #expect(try client.receiveUntilClose() == [])
        client.shutdownWrite()
        // One signal only: a second SIGTERM during the graceful shutdown would meet the default handler.
        let status = child.waitForExit(within: 10)
        #expect(status == 0)
        #expect(child.process.terminationReason == .exit)
    }

    @Test("switchyard-echo (the reactor alone) echoes and exits 0 on SIGTERM", arguments: PollerKind.allCases)
    func minimalEchoBinary(poller: PollerKind) throws {
        let child = try ChildServer(arguments: ["--port", "0", "--threads", "1", "--poller", poller.rawValue])
        defer { _ = child.stop(within: 5) }
        let client = try BlockingSocket(port: child.port)
        defer { client.close() }
        client.setReceiveTimeout(seconds: 10)
        let payload = randomBytes(100_000)
        let writer = Thread { try? client.sendAll(payload) }
        writer.start()
        #expect(try client.receive(exactly: payload.count) == payload)
        kill(child.pid, SIGTERM)
        #expect(try client.receiveUntilClose() == [])
        client.shutdownWrite()
        #expect(child.waitForExit(within: 10) == 0)
    }

    @Test("switchyard-echo refuses a bad flag with a message and exit status 64", arguments: [
        (["--poller", "kqueue"], "--poller must be epoll, poll or select"),
        (["--log-level", "loud"], "--log-level must be trace, debug, info, notice, warning, error or critical"),
        (["--max-connections", "0"], "--max-connections must be positive"),
    ])
    func minimalEchoBadFlag(arguments: [String], message: String) throws {
        let exe = switchyardEchoExecutable()
        let process = Process()
        process.executableURL = URL(fileURLWithPath: exe)
        process.arguments = arguments
        let errors = Pipe()
        process.standardError = errors
        process.standardOutput = FileHandle.nullDevice
        try process.run()
        let text = String(decoding: errors.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        process.waitUntilExit()
        #expect(process.terminationStatus == 64)
        #expect(text.contains(message), "\(text)")
    }
}
