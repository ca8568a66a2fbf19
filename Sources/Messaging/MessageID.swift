/// Message ids of the wire protocol (PROTOCOL.md). Ids are unique across services so one router can serve several.
public enum MessageID {
    /// Reserved by Switchyard for heartbeats: a client that has been silent sends a frame with this id and an empty
    /// body; servers and clients swallow it (it never reaches a handler) and count it as activity. Lars uses 1...8,
    /// so 0 cannot collide with a Lars peer.
    public static let heartbeat: Int32 = 0

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

    /// The benchmark's protobuf echo (`Switchyard_Bench_EchoMessage`), outside every service's range.
    public static let benchEcho: Int32 = 1000
}

/// Return codes of GetHostResponse.retcode.
public enum LarsReturnCode {
    public static let success: Int32 = 0
    public static let overload: Int32 = 1
    public static let systemError: Int32 = 2
    public static let notExist: Int32 = 3
}
