#if canImport(FoundationEssentials)
import struct FoundationEssentials.Data  // the protobuf `bytes` type; not the whole of Foundation
#else
import struct Foundation.Data
#endif
import LarsProtocol
import LarsWire
import LoadBalancing
import Reactor
import SwitchyardCore

/// Where a client's requests go: the agent's host and ports, resolved once, with each port's timeout error made
/// once (not formatted on every call). One definition for the three clients.
struct AgentEndpoints: Sendable {
    let host: String
    let ports: [Int]
    let timeout: Duration
    let addresses: [SocketAddress]
    private let timeoutErrors: [UInt16: LoadBalanceClientError]

    init(host: String, ports: [Int], timeout: Duration) throws {
        precondition(!ports.isEmpty, "agentPorts must not be empty")
        self.host = host
        self.ports = ports
        self.timeout = timeout
        addresses = try ports.map { try SocketAddress(host: host, port: $0) }
        let ms = timeout.millisecondsTruncated
        timeoutErrors = Dictionary(addresses.map { address in
            (address.port, LoadBalanceClientError.timeout("no agent answered on \(host):\(address.port) within \(ms) ms"))
        }, uniquingKeysWith: { first, _ in first })
    }

    /// `agentPorts[(modid + cmdid) % agentPorts.count]`, as Lars's API picks it (never negative).
    func address(modid: Int32, cmdid: Int32) -> SocketAddress {
        let n = addresses.count
        return addresses[(((Int(modid) + Int(cmdid)) % n) + n) % n]
    }

    /// The error of a request to `address` that no agent answered in time.
    func timeoutError(_ address: SocketAddress) -> LoadBalanceClientError {
        timeoutErrors[address.port] ?? .timeout("no agent answered on \(host):\(address.port)")
    }
}

/// The frames both clients send to the agent, and which agent port a (modid, cmdid) goes to: one definition for
/// `LoadBalanceClient` (async) and `BlockingLoadBalanceClient`, which differ only in how they wait.
enum AgentRequests {
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

    /// Batch GetHost (Switchyard, id 104) for `queries`, in order. Throws ``LoadBalanceClientError/batchRefused(_:)``
    /// when there is no query, or when the request would not fit in one datagram (long keys).
    static func getHostBatch(seq: UInt32, queries: [HostQuery]) throws -> [UInt8] {
        guard !queries.isEmpty else { throw LoadBalanceClientError.batchRefused("a batch needs at least one service") }
        var request = Switchyard_Lb_GetHostBatchRequest()
        request.seq = seq
        request.items = queries.map { query in
            var item = Switchyard_Lb_GetHostBatchItem()
            item.modid = query.modid
            item.cmdid = query.cmdid
            if let key = query.key { item.key = Data(key) }
            return item
        }
        let body: [UInt8] = try request.serializedBytes()
        guard body.count <= FrameParser.maxDatagramBodyLength else {
            throw LoadBalanceClientError.batchRefused(
                "the batch is \(body.count) bytes, more than one datagram (\(FrameParser.maxDatagramBodyLength))")
        }
        return FrameParser.encode(messageID: MessageID.getHostBatchRequest.rawValue, body: body)
    }

    /// The results of a batch reply, one per query in order. Throws ``LoadBalanceClientError/batchRefused(_:)``
    /// when the agent refused the batch, `.badReply` when the answers do not match the queries.
    static func results(of response: Switchyard_Lb_GetHostBatchResponse, for queries: [HostQuery]) throws
        -> [GetHostResult]
    {
        guard response.retcode == LarsReturnCode.success else {
            throw LoadBalanceClientError.batchRefused(response.reason.isEmpty
                ? "the agent refused the batch (retcode \(response.retcode))" : response.reason)
        }
        guard response.answers.count == queries.count else {
            throw LoadBalanceClientError.badReply(
                "\(response.answers.count) answers to a batch of \(queries.count) services")
        }
        return try zip(queries, response.answers).map { query, answer in
            guard answer.modid == query.modid, answer.cmdid == query.cmdid else {
                throw LoadBalanceClientError.badReply("a batch answer for \(answer.modid):\(answer.cmdid) in the "
                                                      + "place of \(query.modid):\(query.cmdid)")
            }
            return try GetHostResult(answer)
        }
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
