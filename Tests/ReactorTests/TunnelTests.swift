import Foundation
import Testing
import TestSupport
@testable import Reactor

#if canImport(Glibc)
import Glibc
#endif

/// A connected loopback TCP pair: (the end the test uses, the end the tunnel gets, non-blocking).
private func tcpPair() throws -> (Int32, Int32) {
    let listener = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    defer { close(listener) }
    var sin = sockaddr_in()
    sin.sin_family = sa_family_t(AF_INET)
    inet_pton(AF_INET, "127.0.0.1", &sin.sin_addr)
    let size = socklen_t(MemoryLayout<sockaddr_in>.size)
    _ = withUnsafePointer(to: &sin) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(listener, $0, size) }
    }
    listen(listener, 1)
    var bound = sockaddr_in()
    var len = size
    _ = withUnsafeMutablePointer(to: &bound) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(listener, $0, &len) }
    }
    let outer = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    let connected = withUnsafePointer(to: &bound) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(outer, $0, size) }
    }
    guard connected == 0 else { throw TestFailure("connect failed: errno \(errno)") }
    let inner = accept(listener, nil, nil)
    _ = fcntl(inner, F_SETFL, fcntl(inner, F_GETFL) | O_NONBLOCK)
    var timeout = timeval(tv_sec: 10, tv_usec: 0)
    setsockopt(outer, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
    return (outer, inner)
}

private func readAll(_ fd: Int32) -> [UInt8] {
    var out: [UInt8] = []
    var buffer = [UInt8](repeating: 0, count: 65536)
    while true {
        let n = recv(fd, &buffer, buffer.count, 0)
        if n <= 0 { return out }
        out += buffer[0..<n]
    }
}

private func writeAll(_ fd: Int32, _ bytes: [UInt8]) {
    var sent = 0
    while sent < bytes.count {
        let n = bytes.withUnsafeBytes { send(fd, $0.baseAddress! + sent, bytes.count - sent, Int32(MSG_NOSIGNAL)) }
        if n <= 0 { return }
        sent += n
    }
}

private let tunnelCases: [(PollerKind, TunnelTransfer)] = PollerKind.allCases.flatMap { p in
    TunnelTransfer.allCases.map { (p, $0) }
}

@Suite("TCPTunnel: two sockets joined on a loop")
struct TunnelTests {
    /// Starts a tunnel between the inner ends of two pairs on `group`'s loop; returns the outer ends and the
    /// outcome, filled when the tunnel ends.
    private func tunnel(_ group: EventLoopGroup, _ options: TunnelOptions, preamble: [UInt8] = [])
        throws -> (client: Int32, server: Int32, outcome: Shared<TunnelOutcome?>)
    {
        let (client, clientInner) = try tcpPair()
        let (server, serverInner) = try tcpPair()
        let outcome = Shared<TunnelOutcome?>(nil)
        let loop = group.next()
        try onLoop(loop) {
            let t = TCPTunnel(loop: loop, client: clientInner, server: serverInner, options: options,
                              preamble: preamble) { _, result in outcome.set(result) }
            try? t.start()
        }
        return (client, server, outcome)
    }

    @Test("bytes both ways, the preamble first; the FINs pass through in turn; the outcome counts the bytes",
          arguments: tunnelCases)
    func bothWaysAndHalfClose(poller: PollerKind, transfer: TunnelTransfer) throws {
        try withGroup(poller: poller) { group in
            let (client, server, outcome) = try tunnel(group, TunnelOptions(transfer: transfer),
                                                       preamble: Array("HELLO".utf8))
            defer { close(client); close(server) }
            let up = (0..<(3 << 20)).map { UInt8(truncatingIfNeeded: $0 &* 7) }
            let writer = Thread { writeAll(client, up); shutdown(client, Int32(SHUT_WR)) }
            writer.start()
            let received = readAll(server)  // until the client's FIN, passed on
            #expect(received == Array("HELLO".utf8) + up)
            #expect(outcome.get() == nil)  // half-closed: the other way still flows
            writeAll(server, Array("bye".utf8))
            shutdown(server, Int32(SHUT_WR))
            #expect(readAll(client) == Array("bye".utf8))
            #expect(eventually { outcome.get() != nil })
            #expect(outcome.get() == TunnelOutcome(end: .finished, clientToServerBytes: UInt64(up.count),
                                                   serverToClientBytes: 3))
        }
    }

    @Test("a reset on one side resets the other and ends the tunnel as that side's failure", arguments: tunnelCases)
    func resetPropagates(poller: PollerKind, transfer: TunnelTransfer) throws {
        try withGroup(poller: poller) { group in
            let (client, server, outcome) = try tunnel(group, TunnelOptions(transfer: transfer))
            defer { close(server) }
            writeAll(client, [1, 2, 3])
            var option = linger(l_onoff: 1, l_linger: 0)
            setsockopt(client, SOL_SOCKET, SO_LINGER, &option, socklen_t(MemoryLayout<linger>.size))
            close(client)
            #expect(eventually { outcome.get() != nil })
            if case .failed(.client, _)? = outcome.get()?.end {} else {
                Issue.record("ended \(String(describing: outcome.get()))")
            }
            var byte: UInt8 = 0
            // The server sees the three bytes, if they got through, then the reset (or at least the end).
            var n = recv(server, &byte, 1, 0)
            while n > 0 { n = recv(server, &byte, 1, 0) }
            #expect(n == 0 || errno == ECONNRESET)
        }
    }

    @Test("a side that does not read: the other is not read either, at most a buffer is held",
          arguments: tunnelCases)
    func backpressure(poller: PollerKind, transfer: TunnelTransfer) throws {
        try withGroup(poller: poller) { group in
            let (client, server, outcome) = try tunnel(group, TunnelOptions(transfer: transfer, bufferBytes: 64 << 10,
                                                                             idleTimeout: .milliseconds(500)))
            defer { close(client); close(server) }
            // The server pushes 64 MiB at a client that reads nothing: its sends stop once every buffer is full.
            var flags = fcntl(server, F_GETFL)
            flags |= O_NONBLOCK
            _ = fcntl(server, F_SETFL, flags)
            let chunk = [UInt8](repeating: 9, count: 65536)
            var pushed = 0
            for _ in 0..<1024 {
                let n = chunk.withUnsafeBytes { send(server, $0.baseAddress!, $0.count, Int32(MSG_NOSIGNAL)) }
                if n <= 0 {
                    usleep(20_000)
                    let again = chunk.withUnsafeBytes { send(server, $0.baseAddress!, $0.count, Int32(MSG_NOSIGNAL)) }
                    if again <= 0 { break }
                    pushed += again
                    continue
                }
                pushed += n
            }
            #expect(pushed < 32 << 20, "the server could push \(pushed) bytes into a client that reads nothing")
            let held = group.ioLoops.reduce(0) { sum, loop in
                sum + ((try? onLoop(loop) { loop.bufferStatistics.outstandingBytes }) ?? 0)
            }
            #expect(held <= 64 << 10)
            // Nothing moves any more: the idle timeout ends it.
            #expect(eventually { outcome.get()?.end == .idleTimeout })
        }
    }

    @Test("a request already waiting when the tunnel starts is passed on by start() itself, before the loop waits",
          arguments: tunnelCases)
    func waitingRequestMovesAtStart(poller: PollerKind, transfer: TunnelTransfer) throws {
        try withGroup(poller: poller) { group in
            let (client, clientInner) = try tcpPair()
            let (server, serverInner) = try tcpPair()
            defer { close(client); close(server) }
            writeAll(client, Array("GET /".utf8))  // in clientInner's receive queue when send returns (loopback)
            let loop = group.next()
            // In one loop task: start, then look at the server's socket before the loop polls again.
            let seen = try onLoop(loop) { () -> [UInt8] in
                let t = TCPTunnel(loop: loop, client: clientInner, server: serverInner,
                                  options: TunnelOptions(transfer: transfer)) { _, _ in }
                try? t.start()
                var buffer = [UInt8](repeating: 0, count: 64)
                let n = recv(server, &buffer, buffer.count, Int32(MSG_DONTWAIT))
                return n > 0 ? Array(buffer[0..<n]) : []
            }
            #expect(seen == Array("GET /".utf8))
            // The tunnel goes on as usual: the answer comes back, the FINs end it.
            writeAll(server, Array("200".utf8))
            var reply = [UInt8](repeating: 0, count: 3)
            #expect(recv(client, &reply, 3, Int32(MSG_WAITALL)) == 3 && reply == Array("200".utf8))
            shutdown(client, Int32(SHUT_WR))
            #expect(readAll(server) == [])
            shutdown(server, Int32(SHUT_WR))
            #expect(readAll(client) == [])
        }
    }
}
