/// One server of a route: an IPv4 address (a number in reading order, 127.0.0.1 is 0x7F000001) and a port.
public struct Host: Sendable, Hashable, Codable, CustomStringConvertible, Comparable {
    public var ip: UInt32
    public var port: UInt16

    public init(ip: UInt32, port: UInt16) {
        self.ip = ip
        self.port = port
    }

    /// Parses "a.b.c.d" and a port; nil when the address is not a dotted quad.
    public init?(address: String, port: Int) {
        guard let ip = Host.parseIPv4(address), (0...65535).contains(port) else { return nil }
        self.init(ip: ip, port: UInt16(port))
    }

    /// Parses "a.b.c.d:port"; nil when malformed.
    public init?(_ text: String) {
        guard let colon = text.lastIndex(of: ":"), let port = Int(text[text.index(after: colon)...]) else {
            return nil
        }
        self.init(address: String(text[..<colon]), port: port)
    }

    /// From the wire's `HostInfo` fields: the ip as int32 (bit pattern), the port as int32.
    public init?(wireIP: Int32, wirePort: Int32) {
        guard (0...65535).contains(wirePort) else { return nil }
        self.init(ip: UInt32(bitPattern: wireIP), port: UInt16(wirePort))
    }

    /// The ip as the wire carries it (int32, same bits).
    public var wireIP: Int32 { Int32(bitPattern: ip) }

    /// "a.b.c.d".
    public var address: String { "\(ip >> 24).\((ip >> 16) & 0xFF).\((ip >> 8) & 0xFF).\(ip & 0xFF)" }

    /// "a.b.c.d:port".
    public var description: String { "\(address):\(port)" }

    public static func < (a: Host, b: Host) -> Bool { (a.ip, a.port) < (b.ip, b.port) }

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
}

/// A route's key: module and command ids.
public struct RouteKey: Sendable, Hashable, Codable, CustomStringConvertible {
    public var modid: Int32
    public var cmdid: Int32

    public init(modid: Int32, cmdid: Int32) {
        self.modid = modid
        self.cmdid = cmdid
    }

    public var description: String { "\(modid)/\(cmdid)" }
}
