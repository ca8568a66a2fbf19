import Foundation
import Reactor
import Testing
import TestSupport

#if canImport(Glibc)
import Glibc
#endif

/// Resident memory of a process in KiB (VmRSS of /proc/PID/status); -1 if it cannot be read.
func residentKiB(pid: Int32) -> Int {
    guard let text = try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8) else { return -1 }
    for line in text.split(separator: "\n") where line.hasPrefix("VmRSS:") {
        return Int(line.split(separator: " ", omittingEmptySubsequences: true)[1]) ?? -1
    }
    return -1
}

/// Clients that push `bytesEach` each to an echo server without reading, so the server queues what it echoes, then
/// read everything back and close.
private struct NonReadingFlood {
    let sockets: [BlockingSocket]
    var sent: [Int]

    init(port: UInt16, connections: Int) throws {
        sockets = try (0..<connections).map { _ in try BlockingSocket(port: port) }
        for s in sockets {
            _ = fcntl(s.fd, F_SETFL, fcntl(s.fd, F_GETFL) | O_NONBLOCK)
            // A small receive buffer (the kernel would let it grow to tcp_rmem's 32 MiB): what the server echoes
            // piles up on the server's side, in its socket buffer and then in its output queue.
            var size: Int32 = 64 << 10
            setsockopt(s.fd, SOL_SOCKET, SO_RCVBUF, &size, socklen_t(MemoryLayout<Int32>.size))
        }
        sent = Array(repeating: 0, count: connections)
    }

    /// Sends until every client has sent `bytesEach` or none made progress for a second (the server stopped reading:
    /// its queue is at the high-water mark and the socket buffers are full). Returns the bytes sent.
    mutating func push(bytesEach: Int) -> Int {
        let block = [UInt8](repeating: 0x61, count: 256 << 10)
        var lastProgress = SystemInfo.monotonicNanoseconds()
        while sent.contains(where: { $0 < bytesEach }),
              SystemInfo.monotonicNanoseconds() - lastProgress < 1_000_000_000 {
            var progressed = false
            for (i, s) in sockets.enumerated() where sent[i] < bytesEach {
                let n = block.withUnsafeBytes { Glibc.send(s.fd, $0.baseAddress, min($0.count, bytesEach - sent[i]),
                                                            Int32(MSG_NOSIGNAL)) }
                if n > 0 {
                    sent[i] += n
                    progressed = true
                }
            }
            if progressed { lastProgress = SystemInfo.monotonicNanoseconds() } else { usleep(10_000) }
        }
        return sent.reduce(0, +)
    }

    /// Half-closes every client, reads until the server closes each, then closes them. Returns the bytes read.
    func drain(timeout: Double = 60) -> Int {
        for s in sockets { s.shutdownWrite() }
        var open = Set(sockets.indices)
        var received = 0
        var buffer = [UInt8](repeating: 0, count: 1 << 20)
        let deadline = SystemInfo.monotonicNanoseconds() + UInt64(timeout * 1e9)
        while !open.isEmpty && SystemInfo.monotonicNanoseconds() < deadline {
            var fds = open.map { pollfd(fd: sockets[$0].fd, events: Int16(POLLIN), revents: 0) }
            guard poll(&fds, nfds_t(fds.count), 1000) > 0 else { continue }
            for p in fds where p.revents != 0 {
                let n = buffer.withUnsafeMutableBytes { Glibc.recv(p.fd, $0.baseAddress, $0.count, 0) }
                if n > 0 {
                    received += n
                } else if n == 0 || (errno != EAGAIN && errno != EINTR) {
                    if let i = sockets.firstIndex(where: { $0.fd == p.fd }) { open.remove(i) }
                }
            }
        }
        for s in sockets { s.close() }
        return received
    }
}

@Suite("Memory comes back after a burst", .serialized)
struct MemoryReturnTests {
    @Test("100 clients that push 8 MiB each without reading: the echo server's RSS returns to within 2x of its start",
          arguments: PollerKind.allCases)
    func rssReturnsAfterBurst(poller: PollerKind) throws {
        let child = try ChildServer(arguments: ["--port", "0", "--threads", "2", "--poller", poller.rawValue])
        defer { child.stop() }
        // Warm-up: a few echoes, so the start figure includes the loops' first buffers.
        for _ in 0..<5 {
            let s = try BlockingSocket(port: child.port, receiveTimeout: 10)
            try s.sendAll(randomBytes(64 << 10))
            _ = try s.receive(exactly: 64 << 10)
            s.close()
        }
        usleep(200_000)
        let start = residentKiB(pid: child.pid)
        #expect(start > 0)

        var flood = try NonReadingFlood(port: child.port, connections: 100)
        let sent = flood.push(bytesEach: 8 << 20)
        // The server reads what the socket buffers hold until its queues reach the high-water mark: wait until its
        // memory stops growing (no megabyte more within a second).
        var peak = residentKiB(pid: child.pid)
        var stableSince = SystemInfo.monotonicNanoseconds()
        while SystemInfo.monotonicNanoseconds() - stableSince < 1_000_000_000 {
            usleep(100_000)
            let now = residentKiB(pid: child.pid)
            if now > peak + 1024 { stableSince = SystemInfo.monotonicNanoseconds() }
            peak = max(peak, now)
        }
        // The burst is real: the server holds tens of megabytes of queued echo.
        #expect(peak - start > 50 << 10, "peak \(peak) KiB, start \(start) KiB: the flood did not load the server")
        let received = flood.drain()
        #expect(received == sent, "echoed \(received) of \(sent) bytes")

        var last = 0
        let back = eventually(timeout: 15, interval: 100_000) {
            last = residentKiB(pid: child.pid)
            return last <= 2 * start
        }
        #expect(back, "RSS \(last) KiB after the clients left; \(start) KiB at the start, \(peak) KiB at the peak")
    }
}

@Suite("Connection buffers shrink once drained")
struct ConnectionBufferTests {
    @Test("a 1 MiB message consumed with 100 bytes left: the connection keeps a small chunk, not the big one",
          arguments: PollerKind.allCases)
    func inputShrinksAfterLargeMessage(poller: PollerKind) throws {
        let message = 1 << 20
        let connection = Shared<TCPConnection?>(nil)
        let consumed = EventCounter()
        try withGroup(poller: poller, ioLoops: 1) { group in
            // Consumes whole 1 MiB messages only; a shorter tail stays with the connection.
            let server = TCPServer(
                group: group, configuration: ServerConfiguration(port: 0),
                callbacks: ConnectionCallbacks(
                    onConnect: { connection.set($0) },
                    onData: { _, bytes in
                        while bytes.readableBytes >= message {
                            bytes.moveReaderIndex(forwardBy: message)
                            consumed.signal()
                        }
                    }))
            let port = try server.start().port
            defer { server.shutdown(timeout: .seconds(2)) }
            let client = try BlockingSocket(port: port)
            defer { client.close() }
            try client.sendAll(randomBytes(message + 100))
            #expect(consumed.wait(for: 1))
            let conn = try #require(connection.get())
            var held = (buffered: 0, unconsumed: 0)
            #expect(try eventually {
                held = try onLoop(conn.loop) { (conn.bufferedBytes, conn.unconsumedInputBytes) }
                return held.unconsumed == 100
            })
            #expect(held.buffered <= 4096, "the connection still holds \(held.buffered) bytes for a 100-byte tail")
        }
    }
}
