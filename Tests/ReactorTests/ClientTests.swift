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

/// What a client's hooks saw.
private final class ClientProbe: Sendable {
    let connects = EventCounter()
    let closes = EventCounter()
    let dataEvents = EventCounter()
    let received = Shared<[UInt8]>([])
    let failures = Shared<[(error: String, errno: Int32?, atNs: UInt64)]>([])
    let failureCount = EventCounter()

    var callbacks: ConnectionCallbacks {
        ConnectionCallbacks(
            onConnect: { [self] _ in connects.signal() },
            onData: { [self] _, bytes in
                let view = bytes.consumeAll()
                received.update { $0.append(contentsOf: view) }
                dataEvents.signal()
            },
            onClose: { [self] _ in closes.signal() })
    }

    var onConnectFailed: @Sendable (Error) -> Void {
        { [self] error in
            var ts = timespec()
            clock_gettime(CLOCK_MONOTONIC, &ts)
            let now = UInt64(ts.tv_sec) * 1_000_000_000 + UInt64(ts.tv_nsec)
            failures.update { $0.append(("\(error)", (error as? IOError)?.errnoCode, now)) }
            failureCount.signal()
        }
    }

    /// Waits until the bytes received so far end with `suffix` (each onData signals; bounded wait).
    func waitForReceived(count: Int, timeout: Double = 10) -> [UInt8] {
        let deadline = Date().addingTimeInterval(timeout)
        var seen = dataEvents.count
        while received.get().count < count && Date() < deadline {
            _ = dataEvents.wait(for: seen + 1, timeout: max(0.01, deadline.timeIntervalSinceNow))
            seen = dataEvents.count
        }
        return received.get()
    }
}

/// Binds a fresh echo server on `group` to `port` (0: any), retrying briefly if the port is still busy.
private func startEchoServer(group: EventLoopGroup, port: Int) throws -> TCPServer {
    var lastError: Error?
    for _ in 0..<50 {
        let server = TCPServer(group: group, configuration: ServerConfiguration(port: port),
                               callbacks: EchoService.callbacks())
        do {
            try server.start()
            return server
        } catch let e as IOError where e.errnoCode == EADDRINUSE {
            lastError = e
            usleep(20_000)
        }
    }
    throw lastError!
}

@Suite("TCP client: connect, echo, reconnect with backoff, refused, disconnect", .serialized)
struct ClientTests {
    @Test("the client echoes, notices the server going away, retries with backoff, and reconnects by itself",
          arguments: PollerKind.allCases)
    func reconnects(poller: PollerKind) throws {
        let serverGroup = try EventLoopGroup(ioLoops: 1, configuration: LoopConfiguration(poller: poller))
        defer { serverGroup.shutdown() }
        let clientGroup = try EventLoopGroup(ioLoops: 0, configuration: LoopConfiguration(poller: poller))
        defer { clientGroup.shutdown() }

        let first = try startEchoServer(group: serverGroup, port: 0)
        let port = first.localAddress!.port
        let probe = ClientProbe()
        let client = try TCPClient(
            loop: clientGroup.acceptorLoop,
            configuration: ClientConfiguration(
                port: Int(port), connectTimeout: .seconds(2), initialBackoff: .milliseconds(20),
                maxBackoff: .milliseconds(160)),
            callbacks: probe.callbacks, onConnectFailed: probe.onConnectFailed)
        defer { client.disconnect() }
        client.connect()

        // 1. Connected: the hooks fire once and echo works.
        #expect(probe.connects.wait(for: 1))
        #expect(client.connection != nil)
        let ping = Array("ping".utf8)
        #expect(client.send(ping))
        #expect(probe.waitForReceived(count: ping.count) == ping)
        #expect(client.attempts == 1)
        #expect(probe.failureCount.count == 0)

        // 2. The server goes away: onClose fires once, then the client keeps retrying.
        first.shutdown(timeout: .seconds(5))
        #expect(probe.closes.wait(for: 1))
        let retries = 6
        #expect(probe.failureCount.wait(for: retries, timeout: 10))
        #expect(probe.closes.count == 1)
        #expect(probe.connects.count == 1)
        #expect(client.connection == nil)
        #expect(client.send(ping) == false)
        #expect(client.attempts >= 1 + retries)
        let failures = probe.failures.get()
        for f in failures.prefix(retries) {
            #expect(f.errno == ECONNREFUSED, "unexpected connect failure: \(f.error)")
        }
        // Backoff: the gap before retry k is at least 20 ms * 2^k, capped at 160 ms (timers never fire early).
        let gapsMs = zip(failures.dropFirst(), failures).map { Double($0.atNs - $1.atNs) / 1e6 }
        for (k, gap) in gapsMs.prefix(retries - 1).enumerated() {
            let backoff = min(20.0 * pow(2, Double(k + 1)), 160)
            #expect(gap >= backoff - 1, "retry \(k + 1) came after \(gap) ms, backoff is \(backoff) ms")
        }

        // 3. A server comes back on the same port: the client reconnects by itself and echo works again.
        let second = try startEchoServer(group: serverGroup, port: Int(port))
        defer { second.shutdown(timeout: .seconds(2)) }
        #expect(probe.connects.wait(for: 2, timeout: 10))
        let again = Array("again".utf8)
        #expect(client.send(again))
        #expect(probe.waitForReceived(count: ping.count + again.count) == ping + again)
        #expect(probe.connects.count == 2)
        #expect(probe.closes.count == 1)

        // 4. disconnect(): the connection closes once and no retry follows.
        client.disconnect()
        #expect(probe.closes.wait(for: 2))
        let attemptsAfterDisconnect = client.attempts
        #expect(eventually { second.connectionCount == 0 })
        let window = EventCounter()
        clientGroup.acceptorLoop.schedule(after: .milliseconds(300)) { window.signal() }  // > the 160 ms backoff cap
        #expect(window.wait(for: 1))
        #expect(client.attempts == attemptsAfterDisconnect)
        #expect(second.connectionCount == 0)
        #expect(probe.connects.count == 2)
        #expect(probe.closes.count == 2)
    }

    @Test("backoff is capped: many retries against a closed port come at the capped pace",
          arguments: PollerKind.allCases)
    func backoffIsCapped(poller: PollerKind) throws {
        let clientGroup = try EventLoopGroup(ioLoops: 0, configuration: LoopConfiguration(poller: poller))
        defer { clientGroup.shutdown() }
        let (holder, port) = try reservePortWithoutListener()
        defer { close(holder) }
        let probe = ClientProbe()
        let client = try TCPClient(
            loop: clientGroup.acceptorLoop,
            configuration: ClientConfiguration(
                port: Int(port), initialBackoff: .milliseconds(10), maxBackoff: .milliseconds(40)),
            callbacks: probe.callbacks, onConnectFailed: probe.onConnectFailed)
        defer { client.disconnect() }
        let start = Date()
        client.connect()
        // Uncapped doubling from 10 ms would need 10 * (2^10 - 1) ms > 10 s for 11 failures; capped at 40 ms
        // it takes about 10 + 20 + 40 * 8 = 350 ms.
        #expect(probe.failureCount.wait(for: 11, timeout: 8))
        #expect(Date().timeIntervalSince(start) < 8)
        #expect(probe.connects.count == 0)
    }

    @Test("connection refused calls onConnectFailed; without reconnect there is no retry; disconnect stops retrying",
          arguments: PollerKind.allCases)
    func refused(poller: PollerKind) throws {
        let clientGroup = try EventLoopGroup(ioLoops: 0, configuration: LoopConfiguration(poller: poller))
        defer { clientGroup.shutdown() }
        let loop = clientGroup.acceptorLoop
        let (holder, port) = try reservePortWithoutListener()
        defer { close(holder) }

        // Without reconnect: exactly one failure, with ECONNREFUSED.
        let once = ClientProbe()
        let single = try TCPClient(
            loop: loop, configuration: ClientConfiguration(port: Int(port), reconnect: false),
            callbacks: once.callbacks, onConnectFailed: once.onConnectFailed)
        single.connect()
        #expect(once.failureCount.wait(for: 1))
        #expect(once.failures.get().first?.errno == ECONNREFUSED)
        let window = EventCounter()
        loop.schedule(after: .milliseconds(300)) { window.signal() }  // past the 100 ms default first backoff
        #expect(window.wait(for: 1))
        #expect(once.failureCount.count == 1)
        #expect(single.attempts == 1)
        #expect(once.connects.count == 0)
        #expect(once.closes.count == 0)

        // With reconnect: failures repeat until disconnect(), then stop.
        let probe = ClientProbe()
        let retrying = try TCPClient(
            loop: loop,
            configuration: ClientConfiguration(
                port: Int(port), initialBackoff: .milliseconds(10), maxBackoff: .milliseconds(20)),
            callbacks: probe.callbacks, onConnectFailed: probe.onConnectFailed)
        retrying.connect()
        #expect(probe.failureCount.wait(for: 3))
        retrying.disconnect()
        let attempts = try onLoop(loop) { retrying.attempts }  // after the disconnect has run on the loop
        let window2 = EventCounter()
        loop.schedule(after: .milliseconds(200)) { window2.signal() }  // ten times the backoff cap
        #expect(window2.wait(for: 1))
        #expect(retrying.attempts == attempts)
        // Each attempt failed once, except perhaps one still in progress when disconnect() abandoned it.
        #expect(attempts - probe.failureCount.count <= 1)
        #expect(probe.connects.count == 0)
    }
}

/// A port bound (not listening) by a socket the test keeps open: connects to it are refused, and no other
/// socket can take it meanwhile.
private func reservePortWithoutListener() throws -> (Int32, UInt16) {
    try boundLoopbackSocket()
}
