#if canImport(Glibc)
import Glibc
#endif
import DatabaseAgentProtocol
import LarsWire
import SwiftProtobuf
import Synchronization

/// One blocking TCP connection to the database agent, framed with LarsWire: the agent:// driver's transport.
///
/// Reads happen on the owning driver connection's worker thread only; sends may also come from the statement timer's
/// thread (a canceller's Cancel frame), so sending takes a lock. `shutdown()` may be called from any thread.
final class AgentSocket: @unchecked Sendable {
    // @unchecked Sendable: `fd` never changes after init; the read buffer is touched by the worker thread only
    // (reads are never concurrent), and sends are serialized by `sendLock`.
    private let fd: Int32
    private let sendLock = Mutex<Bool>(false)  // true once closed
    private var buffer: [UInt8] = []
    private var readIndex = 0
    private let decoder: FrameDecoder
    /// The longest wait for the next frame of an answer.
    let readTimeout: Duration
    let peer: String

    /// Connects within `timeout`. Throws ``StorageError/connectionFailed(_:)``.
    init(host: String, port: Int, timeout: Duration, readTimeout: Duration, maxBodyLength: Int) throws {
        self.peer = "\(host):\(port)"
        self.readTimeout = readTimeout
        self.decoder = FrameDecoder(maxBodyLength: maxBodyLength)
        func failed(_ why: String) -> StorageError {
            .connectionFailed(.init("cannot connect to the database agent at \(host):\(port): \(why)", driver: "agent"))
        }
        var hints = addrinfo()
        hints.ai_family = AF_UNSPEC
        hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
        var list: UnsafeMutablePointer<addrinfo>?
        let rc = getaddrinfo(host, String(port), &hints, &list)
        guard rc == 0, let first = list else { throw failed(String(cString: gai_strerror(rc))) }
        defer { freeaddrinfo(list) }
        var lastError = "no address"
        var entry: UnsafeMutablePointer<addrinfo>? = first
        var connected: Int32 = -1
        while let info = entry, connected < 0 {
            entry = info.pointee.ai_next
            let s = socket(info.pointee.ai_family, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue)
                           | Int32(SOCK_NONBLOCK.rawValue), 0)
            guard s >= 0 else {
                lastError = String(cString: strerror(errno))
                continue
            }
            if Glibc.connect(s, info.pointee.ai_addr, info.pointee.ai_addrlen) == 0 || errno == EINPROGRESS {
                if let error = Self.wait(s, events: Int16(POLLOUT), timeout: timeout) {
                    lastError = error
                } else {
                    var soError: Int32 = 0
                    var length = socklen_t(MemoryLayout<Int32>.size)
                    getsockopt(s, SOL_SOCKET, SO_ERROR, &soError, &length)
                    if soError == 0 {
                        connected = s
                        continue
                    }
                    lastError = String(cString: strerror(soError))
                }
            } else {
                lastError = String(cString: strerror(errno))
            }
            Glibc.close(s)
        }
        guard connected >= 0 else { throw failed(lastError) }
        var one: Int32 = 1
        setsockopt(connected, Int32(IPPROTO_TCP), TCP_NODELAY, &one, socklen_t(MemoryLayout<Int32>.size))
        fd = connected
    }

    deinit { Glibc.close(fd) }

    /// Polls one descriptor; nil when ready, else why not.
    private static func wait(_ fd: Int32, events: Int16, timeout: Duration) -> String? {
        let deadline = ContinuousClock.now + timeout
        while true {
            let left = deadline - ContinuousClock.now
            guard left > .zero else { return "timed out after \(timeout)" }
            var entry = pollfd(fd: fd, events: events, revents: 0)
            let rc = poll(&entry, 1, Int32(clamping: max(1, left.millisecondsRoundedUp)))
            if rc > 0 { return nil }
            if rc < 0 && errno != EINTR { return String(cString: strerror(errno)) }
        }
    }

    /// Sends one frame whole. Throws ``StorageError/connectionLost(_:)``.
    func send(_ message: some SwiftProtobuf.Message, _ id: DatabaseAgentMessageID) throws {
        let body: [UInt8]
        do { body = try message.serializedBytes() } catch {
            throw StorageError.other(.init("cannot encode the request for the agent: \(error)", driver: "agent"))
        }
        guard body.count <= decoder.maxBodyLength else {
            throw StorageError.other(.init(
                "the request of \(body.count) bytes is over the agent's frame bound of \(decoder.maxBodyLength)",
                driver: "agent"))
        }
        let frame = FrameParser.encode(messageID: id.rawValue, body: body)
        try sendLock.withLock { closed in
            guard !closed else { throw lost("the connection is closed") }
            var sent = 0
            while sent < frame.count {
                let n = frame.withUnsafeBytes { raw in
                    Glibc.send(fd, raw.baseAddress! + sent, raw.count - sent, Int32(MSG_NOSIGNAL))
                }
                if n > 0 {
                    sent += n
                } else if n < 0 && errno == EINTR {
                    continue
                } else if n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK) {
                    if let error = Self.wait(fd, events: Int16(POLLOUT), timeout: readTimeout) {
                        throw lost("the agent took no bytes: \(error)")
                    }
                } else {
                    throw lost("send failed: \(String(cString: strerror(errno)))")
                }
            }
        }
    }

    /// Reads the next whole frame (blocking up to ``readTimeout`` for each piece). Worker thread only. Throws
    /// ``StorageError/connectionLost(_:)``.
    func receive() throws -> (id: Int32, body: [UInt8]) {
        while true {
            var frame: (Int32, [UInt8])?
            let start = readIndex
            let (consumed, stop) = buffer.withUnsafeBytes { raw in
                decoder.decode(UnsafeRawBufferPointer(rebasing: raw[start...])) { id, body in
                    frame = (id, Array(body))
                    return false
                }
            }
            readIndex += consumed
            if case .invalid(let error) = stop { throw lost("bad frame from the agent: \(error)") }
            if let frame {
                if readIndex == buffer.count {
                    buffer.removeAll(keepingCapacity: true)
                    readIndex = 0
                }
                return frame
            }
            if readIndex > 0 {
                buffer.removeSubrange(0..<readIndex)
                readIndex = 0
            }
            try fill()
        }
    }

    private func fill() throws {
        if let error = Self.wait(fd, events: Int16(POLLIN), timeout: readTimeout) {
            throw lost("no answer from the agent: \(error)")
        }
        let old = buffer.count
        buffer.append(contentsOf: repeatElement(0, count: 64 << 10))
        let n = buffer.withUnsafeMutableBytes { raw in recv(fd, raw.baseAddress! + old, 64 << 10, 0) }
        if n > 0 {
            buffer.removeLast((64 << 10) - n)
            return
        }
        buffer.removeLast(64 << 10)
        if n < 0 && (errno == EINTR || errno == EAGAIN || errno == EWOULDBLOCK) { return }
        throw lost(n == 0 ? "the agent closed the connection" : "receive failed: \(String(cString: strerror(errno)))")
    }

    /// Shuts the socket down (the worker's blocked read fails at once). Any thread.
    func shutdown() {
        sendLock.withLock { closed in
            closed = true
            _ = Glibc.shutdown(fd, Int32(SHUT_RDWR))
        }
    }

    private func lost(_ why: String) -> StorageError {
        .connectionLost(.init("database agent at \(peer): \(why)", driver: "agent"))
    }
}
