import Foundation
import LarsWire
import Logging
import Messaging
import Metrics
import Reactor
import Testing
import TestSupport

#if canImport(Glibc)
import Glibc
#endif

// Helpers of the socket-level messaging tests (the blocking sockets, counters and groups they share with other
// targets are in TestSupport): frames on the blocking test socket, a UDP peer socket, and a framed server.

/// Every socket-level messaging suite nests in this one, so they run one at a time (timing-sensitive tests such as
/// the idle timeout do not compete with the other suites for the machine's cores).
@Suite("Messaging over real sockets", .serialized)
enum MessagingSocketTests {}

/// A frame as the tests see it.
struct TestFrame: Equatable, Sendable, CustomStringConvertible {
    var id: Int32
    var body: [UInt8]
    var description: String { "frame(id: \(id), \(body.count) bytes)" }
}

/// Header bytes with any (even invalid) length field.
func rawHeader(id: Int32, length: Int32) -> [UInt8] {
    var out: [UInt8] = []
    withUnsafeBytes(of: id.littleEndian) { out.append(contentsOf: $0) }
    withUnsafeBytes(of: length.littleEndian) { out.append(contentsOf: $0) }
    return out
}

/// Bytes derived from a seed, so each frame of a test has a distinct, checkable body.
func patternBytes(_ count: Int, seed: Int) -> [UInt8] {
    (0..<count).map { UInt8(truncatingIfNeeded: $0 &* 31 &+ seed &* 7 &+ 1) }
}

extension BlockingSocket {
    /// A client of the framed servers: TCP_NODELAY (each frame goes out at once) and a receive timeout, so a
    /// silent server fails the test instead of hanging it.
    static func frameClient(port: UInt16, receiveTimeout: Int = 10) throws -> BlockingSocket {
        try BlockingSocket(port: port, receiveTimeout: receiveTimeout, noDelay: true)
    }

    func sendFrame(id: Int32, body: [UInt8]) throws {
        try sendAll(FrameParser.encode(messageID: id, body: body))
    }

    /// Reads one frame; throws if the connection ends first or nothing arrives within the receive timeout.
    func receiveFrame() throws -> TestFrame {
        let header = try receive(exactly: 8)
        guard header.count == 8 else { throw TestFailure("connection ended before a frame header") }
        let id = header.withUnsafeBytes { Int32(littleEndian: $0.loadUnaligned(as: Int32.self)) }
        let length = header.withUnsafeBytes { Int32(littleEndian: $0.loadUnaligned(fromByteOffset: 4, as: Int32.self)) }
        guard length >= 0 else { throw TestFailure("negative length \(length) from the server") }
        let body = try receive(exactly: Int(length))
        guard body.count == Int(length) else { throw TestFailure("connection ended inside a frame body") }
        return TestFrame(id: id, body: body)
    }
}

/// A blocking UDP socket on 127.0.0.1 with a receive timeout: the client side of the UDP tests.
final class DatagramSocket: @unchecked Sendable {
    // @unchecked Sendable: used by one thread at a time.
    let fd: Int32
    let localPort: UInt16

    init(receiveTimeout: Int = 5) throws {
        (fd, localPort) = try boundLoopbackSocket(type: Int32(SOCK_DGRAM.rawValue))
        var tv = timeval(tv_sec: receiveTimeout, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        var size: Int32 = 1 << 20
        setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &size, socklen_t(MemoryLayout<Int32>.size))
    }

    /// Sends one datagram to 127.0.0.1:`port`.
    func send(_ bytes: [UInt8], port: UInt16) throws {
        var sin = sockaddr_in()
        sin.sin_family = sa_family_t(AF_INET)
        sin.sin_port = port.bigEndian
        inet_pton(AF_INET, "127.0.0.1", &sin.sin_addr)
        let n = bytes.withUnsafeBytes { raw in
            withUnsafePointer(to: &sin) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                    sendto(fd, raw.baseAddress, raw.count, 0, $0, socklen_t(MemoryLayout<sockaddr_in>.size))
                }
            }
        }
        if n != bytes.count { throw POSIXError(.init(rawValue: errno)!) }
    }

    /// Receives one datagram and the port it came from; throws on the receive timeout.
    func receive() throws -> (bytes: [UInt8], fromPort: UInt16) {
        var buf = [UInt8](repeating: 0, count: 65_536)
        var sin = sockaddr_in()
        var len = socklen_t(MemoryLayout<sockaddr_in>.size)
        while true {
            let n = buf.withUnsafeMutableBytes { raw in
                withUnsafeMutablePointer(to: &sin) {
                    $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                        recvfrom(fd, raw.baseAddress, raw.count, 0, $0, &len)
                    }
                }
            }
            if n < 0 && errno == EINTR { continue }
            if n < 0 { throw TestFailure("no datagram within the receive timeout (errno \(errno))") }
            return (Array(buf[0..<n]), UInt16(bigEndian: sin.sin_port))
        }
    }

    /// Receives one datagram and parses it as a frame.
    func receiveFrame() throws -> (frame: TestFrame, fromPort: UInt16) {
        let (bytes, port) = try receive()
        let parsed = bytes.withUnsafeBytes { FrameParser.parseDatagram($0) }
        switch parsed {
        case .success(let f): return (TestFrame(id: f.messageID, body: Array(f.body)), port)
        case .failure(let e): throw TestFailure("reply is not a frame: \(e)")
        }
    }

    func close() { Glibc.close(fd) }
}

/// Carries a loop-bound value to its own loop (the value is only touched there).
struct LoopBound<T>: @unchecked Sendable {
    // @unchecked Sendable: the value is used on its own loop only (see `onLoop`).
    let value: T
}

/// `eventually` for async tests: sleeps without blocking a cooperative thread.
func pollUntilAsync(timeout: Double = 10, _ condition: () -> Bool) async -> Bool {
    let deadline = Date().addingTimeInterval(timeout)
    while Date() < deadline {
        if condition() { return true }
        try? await Task.sleep(for: .milliseconds(1))
    }
    return condition()
}

/// Seconds since `start` (monotonic).
func secondsSince(_ start: UInt64) -> Double {
    Double(SystemInfo.monotonicNanoseconds() - start) / 1e9
}

/// A started framed server on `group`, shut down when `body` returns.
func withFramedServer<R>(
    group: EventLoopGroup, router: MessageRouter<TCPConnection>,
    maxBodyLength: Int = FrameParser.defaultMaxBodyLength, idleTimeout: Duration? = nil,
    headTimeout: Duration? = nil, partialFrameBudgetBytes: Int = 0,
    logQuietInterval: Duration = .seconds(10),
    logger: Logger? = nil, metricsFactory: MetricsFactory = MetricsSystem.factory,
    onConnect: @escaping @Sendable (TCPConnection) -> Void = { _ in },
    onClose: @escaping @Sendable (TCPConnection) -> Void = { _ in },
    _ body: (FramedServer, UInt16) throws -> R
) throws -> R {
    let server = FramedServer(
        group: group,
        configuration: FramedServerConfiguration(server: ServerConfiguration(port: 0), maxBodyLength: maxBodyLength,
                                                 idleTimeout: idleTimeout, headTimeout: headTimeout,
                                                 partialFrameBudgetBytes: partialFrameBudgetBytes,
                                                 logQuietInterval: logQuietInterval),
        router: router, logger: logger ?? Logger(label: "test", factory: { _ in SwiftLogNoOpLogHandler() }),
        metricsFactory: metricsFactory, onConnect: onConnect, onClose: onClose)
    let address = try server.start()
    defer { server.shutdown(timeout: .seconds(2)) }
    return try body(server, address.port)
}

/// A router that echoes every frame of `ids` back unchanged.
func echoRouter(ids: [TestID] = [TestID(10)]) throws -> MessageRouter<TCPConnection> {
    let router = MessageRouter<TCPConnection>()
    for id in ids {
        try router.on(id) { message in message.connection.sendFrameInLoop(messageID: message.messageID, body: message.body) }
    }
    return router
}

/// Message ids of the tests' own frames (the generic layer's tests use numbers outside every service's range too).
struct TestID: FrameMessageID {
    let rawValue: Int32
    init(rawValue: Int32) { self.rawValue = rawValue }
    init(_ value: Int32) { self.rawValue = value }
}
