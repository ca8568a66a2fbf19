import Foundation
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

// Plain blocking sockets for the peer side of the tests, independent of the reactor under test.

/// A plain blocking TCP socket for the client side of tests, independent of the reactor under test.
public final class BlockingSocket: @unchecked Sendable {
    // @unchecked Sendable: one thread uses a socket at a time (a test hands it to a writer thread and waits);
    // closing is guarded by an atomic.
    public let fd: Int32
    /// Closing twice would close whatever descriptor another test opened under the same number meanwhile.
    private let isClosed = Atomic<Bool>(false)

    /// Connects to `host`:`port`. With `receiveTimeout` (seconds) a silent peer fails the test instead of hanging
    /// it; `noDelay` sets TCP_NODELAY, so each small write goes out at once.
    public init(port: UInt16, host: String = "127.0.0.1", receiveTimeout: Int? = nil, noDelay: Bool = false) throws {
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
        if noDelay {
            var one: Int32 = 1
            setsockopt(fd, Int32(IPPROTO_TCP), TCP_NODELAY, &one, socklen_t(MemoryLayout<Int32>.size))
        }
        if let receiveTimeout { setReceiveTimeout(seconds: receiveTimeout) }
    }

    /// Sets a receive timeout so a broken server fails the test instead of hanging it.
    public func setReceiveTimeout(seconds: Int) {
        var tv = timeval(tv_sec: seconds, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
    }

    /// The local port (how the server's side of this connection is found by its peer address).
    public var localPort: UInt16 { TestSupport.localPort(of: fd) }

    public func sendAll(_ bytes: [UInt8]) throws {
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

    /// Reads exactly `count` bytes (fewer if the peer closes first). Throws on a reset and on the receive timeout.
    public func receive(exactly count: Int) throws -> [UInt8] {
        var out = [UInt8](repeating: 0, count: count)
        var got = 0
        while got < count {
            let n = out.withUnsafeMutableBytes { Glibc.recv(fd, $0.baseAddress! + got, count - got, 0) }
            if n < 0 {
                if errno == EINTR { continue }
                throw POSIXError(.init(rawValue: errno)!)
            }
            if n == 0 { break }
            got += n
        }
        return Array(out[0..<got])
    }

    /// Reads until the peer closes; returns everything read.
    public func receiveUntilClose(limit: Int = 1 << 30) throws -> [UInt8] {
        var out: [UInt8] = []
        var buf = [UInt8](repeating: 0, count: 65536)
        while out.count < limit {
            let n = buf.withUnsafeMutableBytes { Glibc.recv(fd, $0.baseAddress!, $0.count, 0) }
            if n < 0 {
                if errno == EINTR { continue }
                throw POSIXError(.init(rawValue: errno)!)
            }
            if n == 0 { break }
            out.append(contentsOf: buf[0..<n])
        }
        return out
    }

    /// True when the peer has closed the connection (EOF or reset) within the receive timeout, with no bytes first.
    public func seesClose() -> Bool {
        var byte: UInt8 = 0
        while true {
            let n = Glibc.recv(fd, &byte, 1, 0)
            if n == 0 { return true }
            if n < 0 && errno == EINTR { continue }
            if n < 0 && errno == ECONNRESET { return true }
            return false  // a byte arrived, or the timeout passed
        }
    }

    public func shutdownWrite() { Glibc.shutdown(fd, Int32(SHUT_WR)) }

    /// Closes with an RST instead of a FIN (SO_LINGER 0).
    public func reset() {
        var lg = linger(l_onoff: 1, l_linger: 0)
        setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, socklen_t(MemoryLayout<linger>.size))
        close()
    }

    /// Closes the descriptor; a second call does nothing.
    public func close() {
        if !isClosed.exchange(true, ordering: .acquiringAndReleasing) { Glibc.close(fd) }
    }
}

/// The local port of a socket (for a connected test socket: the port the server sees as the peer port).
public func localPort(of fd: Int32) -> UInt16 {
    var sin = sockaddr_in()
    var len = socklen_t(MemoryLayout<sockaddr_in>.size)
    _ = withUnsafeMutablePointer(to: &sin) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &len) }
    }
    return UInt16(bigEndian: sin.sin_port)
}

/// A socket of `type` (`SOCK_STREAM`, `SOCK_DGRAM`) bound to 127.0.0.1 and a kernel-chosen port, and that port.
/// With `listenBacklog`, a stream socket also listens (nobody accepts from it unless the test does); without, a
/// stream socket holds the port so connects to it are refused and no other socket can take it meanwhile.
public func boundLoopbackSocket(type: Int32 = Int32(SOCK_STREAM.rawValue), listenBacklog: Int32? = nil) throws
    -> (fd: Int32, port: UInt16)
{
    let fd = socket(AF_INET, type, 0)
    guard fd >= 0 else { throw POSIXError(.init(rawValue: errno)!) }
    var sin = sockaddr_in()
    sin.sin_family = sa_family_t(AF_INET)
    sin.sin_port = 0
    inet_pton(AF_INET, "127.0.0.1", &sin.sin_addr)
    let r = withUnsafePointer(to: &sin) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
    }
    guard r == 0, listenBacklog.map({ listen(fd, $0) == 0 }) ?? true else {
        let e = errno
        Glibc.close(fd)
        throw POSIXError(.init(rawValue: e)!)
    }
    return (fd, localPort(of: fd))
}

/// One-shot TCP exchanges with plain blocking sockets (independent of the reactor under test), each with a 5 s
/// receive timeout. Run them on their own thread.
public enum RawSocket {
    /// Connects to 127.0.0.1:`port`, writes `bytes`, and reads exactly `count` bytes.
    public static func exchange(port: Int, send bytes: [UInt8], receive count: Int) throws -> [UInt8] {
        let socket = try connect(port: port, sending: bytes)
        defer { socket.close() }
        let out = try socket.receive(exactly: count)
        guard out.count == count else {
            throw TestFailure("the peer closed after \(out.count) of \(count) bytes: \(out)")
        }
        return out
    }

    /// Connects to 127.0.0.1:`port`, writes `bytes`, and reads until the peer closes (a reset counts as closing).
    public static func sendAndAwaitClose(port: Int, _ bytes: [UInt8]) throws {
        let socket = try connect(port: port, sending: bytes)
        defer { socket.close() }
        do {
            _ = try socket.receiveUntilClose()
        } catch let error as POSIXError where error.code == .ECONNRESET {
            return
        } catch {
            throw TestFailure("read: \(error) (the server did not close the connection)")
        }
    }

    private static func connect(port: Int, sending bytes: [UInt8]) throws -> BlockingSocket {
        guard let port = UInt16(exactly: port) else { throw TestFailure("port \(port) out of range") }
        let socket = try BlockingSocket(port: port, receiveTimeout: 5)
        do {
            try socket.sendAll(bytes)
        } catch {
            socket.close()
            throw error
        }
        return socket
    }
}
