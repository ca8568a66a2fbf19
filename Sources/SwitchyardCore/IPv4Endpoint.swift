/// An IPv4 endpoint: an address (a number in reading order, 127.0.0.1 is 0x7F000001) and a port. The one endpoint
/// type of the project: `Host` (a server of a route, LoadBalancing) and `SocketAddress` (what a socket binds or
/// connects to, Reactor) are this type, so an address moves between layers without conversion.
public struct IPv4Endpoint: Sendable, Hashable, Codable, CustomStringConvertible, Comparable {
    public var ip: UInt32
    public var port: UInt16

    public init(ip: UInt32, port: UInt16) {
        self.ip = ip
        self.port = port
    }

    /// Parses "a.b.c.d" and a port; nil when the address is not a dotted quad or the port is out of range.
    public init?(address: String, port: Int) {
        guard let ip = IPv4Endpoint.parseIPv4(address), (0...65535).contains(port) else { return nil }
        self.init(ip: ip, port: UInt16(port))
    }

    /// Parses "a.b.c.d:port"; nil when malformed.
    public init?(_ text: String) {
        guard let (address, port) = IPv4Endpoint.splitHostPort(text) else { return nil }
        self.init(address: address, port: port)
    }

    /// "a.b.c.d".
    public var address: String { "\(ip >> 24).\((ip >> 16) & 0xFF).\((ip >> 8) & 0xFF).\(ip & 0xFF)" }

    /// "a.b.c.d:port".
    public var description: String { "\(address):\(port)" }

    public static func < (a: IPv4Endpoint, b: IPv4Endpoint) -> Bool { (a.ip, a.port) < (b.ip, b.port) }

    /// Parses a dotted quad into a number in reading order.
    public static func parseIPv4(_ text: String) -> UInt32? {
        let parts = text.split(separator: ".", omittingEmptySubsequences: false)
        guard parts.count == 4 else { return nil }
        var ip: UInt32 = 0
        for part in parts {
            guard !part.isEmpty, part.count <= 3, let byte = UInt8(part) else { return nil }
            ip = ip << 8 | UInt32(byte)
        }
        return ip
    }

    /// Splits "HOST:PORT" (a name or a dotted quad, and a port 0...65535) at its last colon; nil when malformed.
    public static func splitHostPort(_ text: String) -> (host: String, port: Int)? {
        guard let colon = text.lastIndex(of: ":"), let port = Int(text[text.index(after: colon)...]),
              (0...65535).contains(port) else { return nil }
        let host = String(text[..<colon])
        return host.isEmpty ? nil : (host, port)
    }
}
