import SwitchyardCore

/// One server of a route: an IPv4 address and a port (the project's one endpoint type).
public typealias Host = IPv4Endpoint

extension IPv4Endpoint {
    /// From the wire's `HostInfo` fields: the ip as int32 (bit pattern), the port as int32.
    public init?(wireIP: Int32, wirePort: Int32) {
        guard (0...65535).contains(wirePort) else { return nil }
        self.init(ip: UInt32(bitPattern: wireIP), port: UInt16(wirePort))
    }

    /// The ip as the wire carries it (int32, same bits).
    public var wireIP: Int32 { Int32(bitPattern: ip) }
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
