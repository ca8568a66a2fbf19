import LoadBalancing
import LarsWire

/// Message ids of the wire protocol (PROTOCOL.md). Ids are unique across services so one router can serve several.
public enum MessageID {
    /// Reserved by the framework for heartbeats (`ReservedMessageID.heartbeat`).
    public static let heartbeat: Int32 = ReservedMessageID.heartbeat

    public static let getRouteRequest: Int32 = 1
    public static let getRouteResponse: Int32 = 2
    public static let reportStatusRequest: Int32 = 3
    public static let getHostRequest: Int32 = 4
    public static let getHostResponse: Int32 = 5
    public static let reportRequest: Int32 = 6
    public static let apiGetRouteRequest: Int32 = 7
    public static let apiGetRouteResponse: Int32 = 8
    /// Switchyard extension: GetHost by key (consistent hashing with bounded loads), client API -> agent, UDP;
    /// body `Switchyard_Lb_GetHostByKeyRequest`.
    public static let getHostByKeyRequest: Int32 = 100
    /// Its answer, agent -> client API: body `Lars_GetHostResponse`.
    public static let getHostByKeyResponse: Int32 = 101
    /// Switchyard extension: a server registers itself for a route with a time to live, server -> name service,
    /// TCP; body `Switchyard_Lb_RegisterHostRequest`.
    public static let registerHostRequest: Int32 = 102
    /// Its answer, name service -> server: body `Switchyard_Lb_RegisterHostResponse`.
    public static let registerHostResponse: Int32 = 103
}

/// Return codes of GetHostResponse.retcode.
public enum LarsReturnCode {
    public static let success: Int32 = 0
    public static let overload: Int32 = 1
    public static let systemError: Int32 = 2
    public static let notExist: Int32 = 3
}

extension Host {
    /// A host from the wire's `HostInfo`; nil when the port is out of range.
    public init?(_ info: Lars_HostInfo) {
        self.init(wireIP: info.ip, wirePort: info.port)
    }
}

extension Lars_HostInfo {
    /// The wire's `HostInfo` of a host.
    public init(_ host: Host) {
        self.init()
        ip = host.wireIP
        port = Int32(host.port)
    }
}
