#if canImport(Glibc)
import Glibc
#endif

import SwitchyardCore

/// An IPv4 socket address (the wire protocol carries IPv4 only): the project's one endpoint type, `IPv4Endpoint`,
/// which LoadBalancing calls `Host`.
public typealias SocketAddress = IPv4Endpoint

extension IPv4Endpoint {
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

    /// Dotted quad of `ip` (the same as `address`; the name a socket address has in this module).
    public var host: String { address }

    /// The address `fd` is bound to (getsockname); nil if it has none.
    static func local(of fd: Int32) -> SocketAddress? { Posix.address(of: fd, peer: false) }

    /// The address `fd` is connected to (getpeername); nil if it is not connected.
    static func peer(of fd: Int32) -> SocketAddress? { Posix.address(of: fd, peer: true) }
}

extension IPv4Endpoint {
    func withSockaddr<R>(_ body: (UnsafePointer<sockaddr>, socklen_t) -> R) -> R {
        var sin = sockaddrIn
        return withUnsafePointer(to: &sin) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { body($0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
    }
}
