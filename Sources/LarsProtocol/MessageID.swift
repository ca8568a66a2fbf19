import LoadBalancing
import LarsWire

/// Message ids of the Lars protocol and Switchyard's load-balancing extensions (PROTOCOL.md). Ids are unique across
/// services so one router can serve several.
public struct MessageID: FrameMessageID {
    public let rawValue: Int32
    public init(rawValue: Int32) { self.rawValue = rawValue }

    /// Reserved by the framework for heartbeats (`ReservedMessageID.heartbeat`).
    public static let heartbeat = MessageID(rawValue: ReservedMessageID.heartbeat)

    public static let getRouteRequest = MessageID(rawValue: 1)
    public static let getRouteResponse = MessageID(rawValue: 2)
    public static let reportStatusRequest = MessageID(rawValue: 3)
    public static let getHostRequest = MessageID(rawValue: 4)
    public static let getHostResponse = MessageID(rawValue: 5)
    public static let reportRequest = MessageID(rawValue: 6)
    public static let apiGetRouteRequest = MessageID(rawValue: 7)
    public static let apiGetRouteResponse = MessageID(rawValue: 8)
    /// Switchyard extension: GetHost by key (consistent hashing with bounded loads), client API -> agent, UDP;
    /// body `Switchyard_Lb_GetHostByKeyRequest`.
    public static let getHostByKeyRequest = MessageID(rawValue: 100)
    /// Its answer, agent -> client API: body `Lars_GetHostResponse`.
    public static let getHostByKeyResponse = MessageID(rawValue: 101)
    /// Switchyard extension: a server registers itself for a route with a time to live, server -> name service,
    /// TCP; body `Switchyard_Lb_RegisterHostRequest`.
    public static let registerHostRequest = MessageID(rawValue: 102)
    /// Its answer, name service -> server: body `Switchyard_Lb_RegisterHostResponse`.
    public static let registerHostResponse = MessageID(rawValue: 103)
    /// Switchyard extension: several GetHosts in one datagram, client API -> agent, UDP; body
    /// `Switchyard_Lb_GetHostBatchRequest`.
    public static let getHostBatchRequest = MessageID(rawValue: 104)
    /// Its answer, agent -> client API: body `Switchyard_Lb_GetHostBatchResponse` (every answer, in request order).
    public static let getHostBatchResponse = MessageID(rawValue: 105)
    /// Switchyard extension: the outcomes of many calls in one datagram, client API -> agent, UDP, no reply; body
    /// `Lars_ReportStatusRequest` (each result a host with its successes and errors, in call order). Sent only to an
    /// agent that has answered a batch GetHost (id 104).
    public static let reportBatchRequest = MessageID(rawValue: 106)
    /// Switchyard extension: a regional name service asks its parent for a route it has no rows for, name service
    /// -> name service, TCP; body `Switchyard_Names_ChainGetRouteRequest`, answered and pushed with id 2.
    public static let chainGetRouteRequest = MessageID(rawValue: 110)
    /// Switchyard extension, state relay: a server publishes a state change for its module, server -> name service,
    /// TCP; body `Switchyard_Names_PublishState`, answered with id 112 (`Switchyard_Names_PublishStateResponse`).
    public static let publishState = MessageID(rawValue: 111)
    public static let publishStateResponse = MessageID(rawValue: 112)
    /// State relay: subscribe to a module's changes (`Switchyard_Names_SubscribeState`), server -> name service.
    public static let subscribeState = MessageID(rawValue: 113)
    /// State relay: one change (`Switchyard_Names_StateChange`), name service -> subscriber.
    public static let stateChange = MessageID(rawValue: 114)
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
