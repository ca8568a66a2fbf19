#if canImport(Glibc)
import Glibc
#endif

/// An IPv4 socket address (the wire protocol carries IPv4 only).
public struct SocketAddress: Sendable, Hashable, CustomStringConvertible {
    /// The address as a number in reading order: 127.0.0.1 is 0x7F000001.
    public var ip: UInt32
    public var port: UInt16

    public init(ip: UInt32, port: UInt16) {
        self.ip = ip
        self.port = port
    }

    /// Parses a dotted quad or resolves a host name to its first IPv4 address.
    public init(host: String, port: Int) throws {
        guard (0...65535).contains(port) else { throw ReactorError.badAddress("\(host):\(port)") }
        var addr = in_addr()
        if inet_pton(AF_INET, host, &addr) == 1 {
            self.init(ip: UInt32(bigEndian: addr.s_addr), port: UInt16(port))
            return
        }
        var hints = addrinfo()
        hints.ai_family = AF_INET
        hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
        var result: UnsafeMutablePointer<addrinfo>?
        guard getaddrinfo(host, nil, &hints, &result) == 0 else { throw ReactorError.badAddress(host) }
        defer { freeaddrinfo(result) }
        guard let first = result, let sa = first.pointee.ai_addr else { throw ReactorError.badAddress(host) }
        let ip = sa.withMemoryRebound(to: sockaddr_in.self, capacity: 1) { UInt32(bigEndian: $0.pointee.sin_addr.s_addr) }
        self.init(ip: ip, port: UInt16(port))
    }

    init(_ sin: sockaddr_in) {
        self.init(ip: UInt32(bigEndian: sin.sin_addr.s_addr), port: UInt16(bigEndian: sin.sin_port))
    }

    var sockaddrIn: sockaddr_in {
        var sin = sockaddr_in()
        sin.sin_family = sa_family_t(AF_INET)
        sin.sin_port = port.bigEndian
        sin.sin_addr.s_addr = ip.bigEndian
        return sin
    }

    /// Dotted quad of `ip`.
    public var host: String {
        "\(ip >> 24).\((ip >> 16) & 0xFF).\((ip >> 8) & 0xFF).\(ip & 0xFF)"
    }

    public var description: String { "\(host):\(port)" }

    /// The address `fd` is bound to (getsockname); nil if it has none.
    static func local(of fd: Int32) -> SocketAddress? { Posix.address(of: fd, peer: false) }

    /// The address `fd` is connected to (getpeername); nil if it is not connected.
    static func peer(of fd: Int32) -> SocketAddress? { Posix.address(of: fd, peer: true) }
}

extension SocketAddress {
    func withSockaddr<R>(_ body: (UnsafePointer<sockaddr>, socklen_t) -> R) -> R {
        var sin = sockaddrIn
        return withUnsafePointer(to: &sin) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { body($0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
    }
}
