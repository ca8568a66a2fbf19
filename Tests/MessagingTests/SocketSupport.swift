import Dispatch
import Foundation
import Logging
import Messaging
import Reactor
import Synchronization
import Testing

#if canImport(Glibc)
import Glibc
#endif

// Helpers of the socket-level messaging tests: plain blocking sockets for the peer side (independent of the
// reactor under test), frame helpers, counters to wait on, and a framed server on a fresh group.

/// Every socket-level messaging suite nests in this one, so they run one at a time (timing-sensitive tests such as
/// the idle timeout do not compete with the other suites for the machine's cores).
@Suite("Messaging over real sockets", .serialized)
enum MessagingSocketTests {}

/// A failed expectation about the peer (short read, unexpected frame).
struct SocketTestFailure: Error, CustomStringConvertible {
    let description: String
    init(_ d: String) { description = d }
}

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

/// A blocking TCP socket speaking frames: the client side of the tests.
final class FrameSocket: @unchecked Sendable {
    // @unchecked Sendable: one thread uses a socket at a time (a test hands it to a writer thread and waits).
    let fd: Int32

    init(port: UInt16, host: String = "127.0.0.1", receiveTimeout: Int = 10) throws {
        fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { throw POSIXError(.init(rawValue: errno)!) }
        var sin = sockaddr_in()
        sin.sin_family = sa_family_t(AF_INET)
        sin.sin_port = port.bigEndian
        inet_pton(AF_INET, host, &sin.sin_addr)
        let r = withUnsafePointer(to: &sin) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                Glibc.connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size))
            }
        }
        if r < 0 {
            let e = errno
            Glibc.close(fd)
            throw POSIXError(.init(rawValue: e)!)
        }
        var one: Int32 = 1
        setsockopt(fd, Int32(IPPROTO_TCP), TCP_NODELAY, &one, socklen_t(MemoryLayout<Int32>.size))
        var tv = timeval(tv_sec: receiveTimeout, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
    }

    /// The local port (how the server's side of this connection is found by its peer address).
    var localPort: UInt16 {
        var sin = sockaddr_in()
        var len = socklen_t(MemoryLayout<sockaddr_in>.size)
        _ = withUnsafeMutablePointer(to: &sin) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &len) }
        }
        return UInt16(bigEndian: sin.sin_port)
    }

    func sendAll(_ bytes: [UInt8]) throws {
        try bytes.withUnsafeBytes { raw in
            var off = 0
            while off < raw.count {
                let n = Glibc.send(fd, raw.baseAddress! + off, raw.count - off, Int32(MSG_NOSIGNAL))
                if n < 0 {
                    if errno == EINTR { continue }
                    throw POSIXError(.init(rawValue: errno)!)
                }
                off += n
            }
        }
    }

    func sendFrame(id: Int32, body: [UInt8]) throws {
        try sendAll(FrameParser.encode(messageID: id, body: body))
    }

    /// Reads exactly `count` bytes; fewer if the peer closes (or resets) first. Throws on the receive timeout.
    func receive(exactly count: Int) throws -> [UInt8] {
        var out = [UInt8](repeating: 0, count: count)
        var got = 0
        while got < count {
            let n = out.withUnsafeMutableBytes { Glibc.recv(fd, $0.baseAddress! + got, count - got, 0) }
            if n < 0 {
                if errno == EINTR { continue }
                if errno == ECONNRESET { break }
                throw POSIXError(.init(rawValue: errno)!)
            }
            if n == 0 { break }
            got += n
        }
        return Array(out[0..<got])
    }

    /// Reads one frame; throws if the connection ends first or nothing arrives within the receive timeout.
    func receiveFrame() throws -> TestFrame {
        let header = try receive(exactly: 8)
        guard header.count == 8 else { throw SocketTestFailure("connection ended before a frame header") }
        let id = header.withUnsafeBytes { Int32(littleEndian: $0.loadUnaligned(as: Int32.self)) }
        let length = header.withUnsafeBytes { Int32(littleEndian: $0.loadUnaligned(fromByteOffset: 4, as: Int32.self)) }
        guard length >= 0 else { throw SocketTestFailure("negative length \(length) from the server") }
        let body = try receive(exactly: Int(length))
        guard body.count == Int(length) else { throw SocketTestFailure("connection ended inside a frame body") }
        return TestFrame(id: id, body: body)
    }

    /// True when the peer has closed the connection (EOF or reset) within the receive timeout, with no bytes first.
    func seesClose() -> Bool {
        var byte: UInt8 = 0
        while true {
            let n = Glibc.recv(fd, &byte, 1, 0)
            if n == 0 { return true }
            if n < 0 && errno == EINTR { continue }
            if n < 0 && errno == ECONNRESET { return true }
            return false  // a byte arrived, or the timeout passed
        }
    }

    func close() { Glibc.close(fd) }
}

/// A blocking UDP socket on 127.0.0.1 with a receive timeout: the client side of the UDP tests.
final class DatagramSocket: @unchecked Sendable {
    // @unchecked Sendable: used by one thread at a time.
    let fd: Int32

    init(receiveTimeout: Int = 5) throws {
        fd = socket(AF_INET, Int32(SOCK_DGRAM.rawValue), 0)
        guard fd >= 0 else { throw POSIXError(.init(rawValue: errno)!) }
        var sin = sockaddr_in()
        sin.sin_family = sa_family_t(AF_INET)
        inet_pton(AF_INET, "127.0.0.1", &sin.sin_addr)
        let r = withUnsafePointer(to: &sin) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        if r < 0 { throw POSIXError(.init(rawValue: errno)!) }
        var tv = timeval(tv_sec: receiveTimeout, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        var size: Int32 = 1 << 20
        setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &size, socklen_t(MemoryLayout<Int32>.size))
    }

    var localPort: UInt16 {
        var sin = sockaddr_in()
        var len = socklen_t(MemoryLayout<sockaddr_in>.size)
        _ = withUnsafeMutablePointer(to: &sin) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &len) }
        }
        return UInt16(bigEndian: sin.sin_port)
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
            if n < 0 { throw SocketTestFailure("no datagram within the receive timeout (errno \(errno))") }
            return (Array(buf[0..<n]), UInt16(bigEndian: sin.sin_port))
        }
    }

    /// Receives one datagram and parses it as a frame.
    func receiveFrame() throws -> (frame: TestFrame, fromPort: UInt16) {
        let (bytes, port) = try receive()
        let parsed = bytes.withUnsafeBytes { FrameParser.parseDatagram($0) }
        switch parsed {
        case .success(let f): return (TestFrame(id: f.messageID, body: Array(f.body)), port)
        case .failure(let e): throw SocketTestFailure("reply is not a frame: \(e)")
        }
    }

    func close() { Glibc.close(fd) }
}

/// Counts events and lets a test wait for a number of them.
final class Signals: Sendable {
    private let state = Mutex<Int>(0)
    private let semaphore = DispatchSemaphore(value: 0)

    func signal() {
        state.withLock { $0 += 1 }
        semaphore.signal()
    }

    var count: Int { state.withLock { $0 } }

    /// Waits until `n` events have been signalled in all; false on timeout.
    func wait(for n: Int, timeout: Double = 10) -> Bool {
        let deadline = DispatchTime.now() + timeout
        while count < n {
            if semaphore.wait(timeout: deadline) == .timedOut { return count >= n }
        }
        return true
    }
}

/// A value shared between loop callbacks and the test.
final class Locked<T: Sendable>: Sendable {
    private let value: Mutex<T>
    init(_ v: T) { value = Mutex(v) }
    func get() -> T { value.withLock { $0 } }
    func set(_ v: T) { value.withLock { $0 = v } }
    func update<R>(_ f: (inout T) -> R) -> R { value.withLock { f(&$0) } }
}

/// Carries a loop-bound value to its own loop (the value is only touched there).
struct LoopBound<T>: @unchecked Sendable {
    // @unchecked Sendable: the value is used on its own loop only (see `runOnLoop`).
    let value: T
}

/// Runs `body` on `loop` and returns its result; the calling thread waits (bounded).
func runOnLoop<T: Sendable>(_ loop: EventLoop, _ body: @escaping @Sendable () -> T) throws -> T {
    let result = Locked<T?>(nil)
    let done = DispatchSemaphore(value: 0)
    loop.execute {
        result.set(body())
        done.signal()
    }
    guard done.wait(timeout: .now() + 10) == .success else { throw SocketTestFailure("loop did not run the task") }
    return result.get()!
}

/// Polls a cheap observable condition until it holds, failing after `timeout` seconds.
func pollUntil(timeout: Double = 10, interval: useconds_t = 500, _ condition: () throws -> Bool) rethrows -> Bool {
    let deadline = Date().addingTimeInterval(timeout)
    while Date() < deadline {
        if try condition() { return true }
        usleep(interval)
    }
    return try condition()
}

/// `pollUntil` for async tests: sleeps without blocking a cooperative thread.
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

/// A fresh loop group with the given poller, shut down when `body` returns.
func withGroup<R>(poller: PollerKind, ioLoops: Int = 2, _ body: (EventLoopGroup) throws -> R) throws -> R {
    let group = try EventLoopGroup(ioLoops: ioLoops, configuration: LoopConfiguration(poller: poller),
                                   placement: .roundRobin)  // every loop serves: cross-loop paths stay covered
    defer { group.shutdown() }
    return try body(group)
}

/// A started framed server on `group`, shut down when `body` returns.
func withFramedServer<R>(
    group: EventLoopGroup, router: MessageRouter<TCPConnection>,
    maxBodyLength: Int = FrameParser.defaultMaxBodyLength, idleTimeout: Duration? = nil,
    logger: Logger? = nil,
    onConnect: @escaping @Sendable (TCPConnection) -> Void = { _ in },
    onClose: @escaping @Sendable (TCPConnection) -> Void = { _ in },
    _ body: (FramedServer, UInt16) throws -> R
) throws -> R {
    var serverConfiguration = ServerConfiguration(port: 0)
    if let logger { serverConfiguration.logger = logger }
    let server = FramedServer(
        group: group,
        configuration: FramedServerConfiguration(server: serverConfiguration, maxBodyLength: maxBodyLength,
                                                 idleTimeout: idleTimeout),
        router: router, onConnect: onConnect, onClose: onClose)
    let address = try server.start()
    defer { server.shutdown(timeout: .seconds(2)) }
    return try body(server, address.port)
}

/// A router that echoes every frame of `ids` back unchanged.
func echoRouter(ids: [Int32] = [10]) throws -> MessageRouter<TCPConnection> {
    let router = MessageRouter<TCPConnection>()
    for id in ids {
        try router.on(id) { message in message.connection.sendFrame(messageID: message.messageID, body: message.body) }
    }
    return router
}

/// Times out an async operation: the test fails instead of hanging. The operation is cancelled on timeout.
struct AsyncTimeout: Error, CustomStringConvertible {
    let seconds: Double
    var description: String { "timed out after \(seconds) s" }
}

func withTimeout<T: Sendable>(
    _ seconds: Double, _ operation: @escaping @Sendable () async throws -> T
) async throws -> T {
    let race = TimeoutRace<T>()
    return try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<T, Error>) in
        race.begin(continuation)
        let work = Task {
            do { race.finish(.success(try await operation())) } catch { race.finish(.failure(error)) }
        }
        let timer = Task {
            try? await Task.sleep(for: .milliseconds(Int(seconds * 1000)))
            if !Task.isCancelled { race.finish(.failure(AsyncTimeout(seconds: seconds))) }
        }
        race.setTasks([work, timer])
    }
}

/// The operation and the timer of `withTimeout`: whichever finishes first resumes the caller and cancels the other.
final class TimeoutRace<T: Sendable>: Sendable {
    private struct State {
        var continuation: CheckedContinuation<T, Error>?
        var finished = false
        var tasks: [Task<Void, Never>] = []
    }
    private let state = Mutex(State())

    func begin(_ continuation: CheckedContinuation<T, Error>) { state.withLock { $0.continuation = continuation } }

    func setTasks(_ tasks: [Task<Void, Never>]) {
        let finished = state.withLock { s -> Bool in
            s.tasks = tasks
            return s.finished
        }
        if finished { for t in tasks { t.cancel() } }
    }

    func finish(_ result: Result<T, Error>) {
        let (continuation, tasks) = state.withLock { s -> (CheckedContinuation<T, Error>?, [Task<Void, Never>]) in
            if s.finished { return (nil, []) }
            s.finished = true
            defer { s.continuation = nil }
            return (s.continuation, s.tasks)
        }
        guard let continuation else { return }
        for t in tasks { t.cancel() }
        continuation.resume(with: result)
    }
}

/// One log line captured by `CapturingLogHandler`.
struct CapturedLog: Sendable {
    var level: Logger.Level
    var message: String
    var metadata: [String: String]
}

/// A swift-log handler that keeps every line, for tests that check what a server logs.
struct CapturingLogHandler: LogHandler {
    let lines: Locked<[CapturedLog]>
    var metadata: Logger.Metadata = [:]
    var logLevel: Logger.Level = .trace

    subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    func log(event: LogEvent) {
        var all = metadata
        if let extra = event.metadata { all.merge(extra) { _, new in new } }
        let line = CapturedLog(level: event.level, message: "\(event.message)",
                               metadata: all.mapValues { "\($0)" })
        lines.update { $0.append(line) }
    }

    static func logger(into lines: Locked<[CapturedLog]>) -> Logger {
        Logger(label: "test.capture", factory: { _ in CapturingLogHandler(lines: lines) })
    }
}
