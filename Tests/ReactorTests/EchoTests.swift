import Dispatch
import Foundation
import Reactor
import Testing
import TestSupport

#if canImport(Glibc)
import Glibc
#endif

@Suite("Echo over real sockets", .serialized)
struct EchoTests {
    @Test("payloads of any size come back byte for byte, sent in random pieces",
          arguments: PollerKind.allCases, [1, 64 * 1024, 16 * 1024 * 1024])
    func echoPayload(poller: PollerKind, size: Int) throws {
        try withEchoServer(poller: poller) { _, port in
            let client = try BlockingSocket(port: port)
            defer { client.close() }
            client.setReceiveTimeout(seconds: 30)
            let payload = randomBytes(size)
            let writer = Thread {
                var offset = 0
                while offset < payload.count {
                    let piece = min(payload.count - offset, Int.random(in: 1...200_000))
                    try? client.sendAll(Array(payload[offset..<offset + piece]))
                    offset += piece
                }
            }
            writer.start()
            let echoed = try client.receive(exactly: size)
            #expect(echoed.count == size)
            #expect(echoed == payload)
        }
    }

    @Test("half-close: bytes sent before the client's FIN are all echoed, then the server closes",
          arguments: PollerKind.allCases)
    func halfClose(poller: PollerKind) throws {
        try withEchoServer(poller: poller) { _, port in
            let client = try BlockingSocket(port: port)
            defer { client.close() }
            client.setReceiveTimeout(seconds: 20)
            let payload = randomBytes(3 * 1024 * 1024)
            let writer = Thread {
                try? client.sendAll(payload)
                client.shutdownWrite()
            }
            writer.start()
            let echoed = try client.receiveUntilClose()
            #expect(echoed == payload)
        }
    }

    /// Server and clients each run as a process of their own (an exit test for the clients): with select, one
    /// process would need descriptors above FD_SETSIZE, and 1,000 client sockets in the test process would push
    /// the descriptors of tests running beside this one above it too.
    @Test("1,000 concurrent connections echo at once", arguments: PollerKind.allCases)
    func thousandConnections(poller: PollerKind) async {
        await #expect(processExitsWith: .success) { [name = poller.rawValue as String] in
            try thousandConnectionsScenario(poller: PollerKind(rawValue: name)!)
        }
    }
}

/// Runs in the exit test's child process.
private func thousandConnectionsScenario(poller: PollerKind) throws {
    let child = try ChildServer(arguments: ["--port", "0", "--threads", "2", "--poller", poller.rawValue,
                                           "--log-level", "warning"])
    defer { child.stop() }
    let count = 1000
    let messageSize = 512
    var fds: [Int32] = []
    defer { for fd in fds { close(fd) } }
    for _ in 0..<count {
        let s = try BlockingSocket(port: child.port)
        fds.append(s.fd)
    }
    var expected: [[UInt8]] = []
    for fd in fds {
        let msg = randomBytes(messageSize)
        expected.append(msg)
        let n = msg.withUnsafeBytes { send(fd, $0.baseAddress!, $0.count, Int32(MSG_NOSIGNAL)) }
        #expect(n == messageSize)
    }
    // Read all replies with poll(2).
    var received = Array(repeating: [UInt8](), count: count)
    var pfds = fds.map { pollfd(fd: $0, events: Int16(POLLIN), revents: 0) }
    var done = 0
    let deadline = Date().addingTimeInterval(30)
    var buffer = [UInt8](repeating: 0, count: 4096)
    while done < count && Date() < deadline {
        let n = poll(&pfds, nfds_t(pfds.count), 1000)
        if n <= 0 { continue }
        for i in 0..<count where pfds[i].revents != 0 {
            let r = buffer.withUnsafeMutableBytes { recv(pfds[i].fd, $0.baseAddress!, $0.count, 0) }
            if r > 0 { received[i].append(contentsOf: buffer[0..<r]) }
            if r == 0 || received[i].count >= messageSize {
                pfds[i].events = 0
                pfds[i].fd = -1
                done += 1
            }
        }
    }
    #expect(done == count)
    #expect(received == expected)
}
