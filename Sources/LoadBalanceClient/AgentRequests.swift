#if canImport(FoundationEssentials)
import struct FoundationEssentials.Data  // the protobuf `bytes` type; not the whole of Foundation
#else
import struct Foundation.Data
#endif
import LarsProtocol
import LarsWire
import LoadBalancing
import SwitchyardCore

/// The frames both clients send to the agent, and which agent port a (modid, cmdid) goes to: one definition for
/// `LoadBalanceClient` (async) and `BlockingLoadBalanceClient`, which differ only in how they wait.
enum AgentRequests {
    /// `agentPorts[(modid + cmdid) % agentPorts.count]`, as Lars's API picks it (never negative).
    static func address(modid: Int32, cmdid: Int32, in addresses: [IPv4Endpoint]) -> IPv4Endpoint {
        let n = addresses.count
        return addresses[(((Int(modid) + Int(cmdid)) % n) + n) % n]
    }

    /// The timeout error of each agent port, made once (not formatted on every call).
    static func timeoutErrors(agentHost: String, addresses: [IPv4Endpoint], timeout: Duration)
        -> [UInt16: LoadBalanceClientError]
    {
        let ms = timeout.millisecondsTruncated
        return Dictionary(addresses.map { address in
            (address.port, LoadBalanceClientError.timeout(
                "no agent answered on \(agentHost):\(address.port) within \(ms) ms"))
        }, uniquingKeysWith: { first, _ in first })
    }

    /// GetHost (Lars, id 4) for (modid, cmdid) under sequence number `seq`.
    static func getHost(seq: UInt32, modid: Int32, cmdid: Int32) throws -> [UInt8] {
        var request = Lars_GetHostRequest()
        request.seq = seq
        request.modid = modid
        request.cmdid = cmdid
        return FrameParser.encode(messageID: MessageID.getHostRequest.rawValue,
                                  body: try request.serializedBytes() as [UInt8])
    }

    /// GetHostByKey (Switchyard, id 100): consistent hashing of `key`.
    static func getHost(seq: UInt32, modid: Int32, cmdid: Int32, key: [UInt8]) throws -> [UInt8] {
        var request = Switchyard_Lb_GetHostByKeyRequest()
        request.seq = seq
        request.modid = modid
        request.cmdid = cmdid
        request.key = Data(key)
        return FrameParser.encode(messageID: MessageID.getHostByKeyRequest.rawValue,
                                  body: try request.serializedBytes() as [UInt8])
    }

    /// Report (Lars, id 6): retcode 0 is a success, anything else a failure. With a secret (an agent started with
    /// `--report-secret`), the secret rides in field 15, which Lars's agents skip. Nil when it cannot be encoded.
    static func report(modid: Int32, cmdid: Int32, host: Host, retcode: Int32, secret: [UInt8]?) -> [UInt8]? {
        var request = Lars_ReportRequest()
        request.modid = modid
        request.cmdid = cmdid
        var info = Lars_HostInfo()
        info.ip = host.wireIP
        info.port = Int32(host.port)
        request.host = info
        request.retcode = retcode
        guard var body: [UInt8] = try? request.serializedBytes() else { return nil }
        if let secret { body = ReportSecret.appending(secret, to: body) }
        return FrameParser.encode(messageID: MessageID.reportRequest.rawValue, body: body)
    }

    /// API GetRoute (Lars, id 7): the hosts of (modid, cmdid) as the agent knows them.
    static func getRoute(modid: Int32, cmdid: Int32) throws -> [UInt8] {
        var request = Lars_GetRouteRequest()
        request.modid = modid
        request.cmdid = cmdid
        return FrameParser.encode(messageID: MessageID.apiGetRouteRequest.rawValue,
                                  body: try request.serializedBytes() as [UInt8])
    }

    /// The hosts of a GetRoute reply (entries whose address cannot be a host are left out).
    static func hosts(of response: Lars_GetRouteResponse) -> [Host] {
        response.host.compactMap { Host(wireIP: $0.ip, wirePort: $0.port) }
    }
}
