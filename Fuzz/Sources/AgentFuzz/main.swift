// libFuzzer target for the load-balancing agent: its UDP routes (GetHost, GetHost by key, batch GetHost, Report, API
// GetRoute) and
// its name-service route (GetRouteResponse), registered on MessageRouters the way LoadBalanceAgent registers them,
// driving AgentCore on a mock clock, with the shell's timer inputs (refresh, report flush, name service up/down)
// in between. Built by scripts/fuzz (swift build --sanitize=fuzzer --sanitize=address in Fuzz/).
//
// Each input is a script: an operation byte, then its arguments (FuzzInput). Bodies are either raw bytes (most do
// not decode: a protocol error) or a message built from the input and encoded, with small module ids so requests,
// routes and reports meet on the same modules. Checked after every step: each reply answers the request it is for,
// a host given out is one of the module's hosts, a batch is answered item by item in order (or refused when it asks
// for none or more than maxBatchItems), and the module count stays within maxModules for the modules the
// requests create.
import Foundation
import FuzzSupport
import LarsProtocol
import LoadBalanceAgent
import LoadBalancing
import Messaging

/// The core and what the last input produced; the routers' handlers reach it through this box.
final class Agent: @unchecked Sendable {
    // @unchecked Sendable: libFuzzer runs one input at a time on one thread.
    var core: AgentCore<Int>
    var clock = FuzzClock()
    var actions: [AgentCore<Int>.Action] = []
    /// (seq, modid, cmdid, by key) of the GetHost being answered.
    var lastGetHost: (UInt32, Int32, Int32, Bool)?
    var lastGetRoute: (Int32, Int32)?
    /// The batch GetHost being answered.
    var lastBatch: Switchyard_Lb_GetHostBatchRequest?

    init() {
        core = AgentCore(configuration: AgentConfiguration(
            routeCacheFile: "/nonexistent/fuzz-cache", emptyModuleTimeout: .seconds(5), maxModules: 8))
    }
}

/// A loopback source address per fuzzed connection (four of them, so the per-source limits are exercised).
func source(_ connection: Int) -> UInt32 { 0x7F00_0001 &+ UInt32(truncatingIfNeeded: connection & 3) }

func makeRouters(_ agent: Agent) -> (udp: MessageRouter<Int>, names: MessageRouter<Int>) {
    let udp = MessageRouter<Int>()
    try! udp.on(MessageID.getHostRequest, as: Lars_GetHostRequest.self) { request, message in
        agent.lastGetHost = (request.seq, request.modid, request.cmdid, false)
        agent.core.getHost(seq: request.seq, modid: request.modid, cmdid: request.cmdid, key: nil,
                           from: message.connection, source: source(message.connection), now: agent.clock.now,
                           actions: &agent.actions)
    }
    try! udp.on(MessageID.getHostByKeyRequest, as: Switchyard_Lb_GetHostByKeyRequest.self) { request, message in
        agent.lastGetHost = (request.seq, request.modid, request.cmdid, true)
        agent.core.getHost(seq: request.seq, modid: request.modid, cmdid: request.cmdid,
                           key: BoundedLoadRing.hash(request.key), from: message.connection,
                           source: source(message.connection), now: agent.clock.now, actions: &agent.actions)
    }
    try! udp.on(MessageID.getHostBatchRequest, as: Switchyard_Lb_GetHostBatchRequest.self) { request, message in
        agent.lastBatch = request
        agent.core.getHostBatch(request, from: message.connection, source: source(message.connection),
                                now: agent.clock.now, actions: &agent.actions)
    }
    try! udp.on(MessageID.reportRequest, as: Lars_ReportRequest.self) { request, message in
        agent.core.report(request, secret: ReportSecret.extract(from: message.body), source: source(message.connection),
                          now: agent.clock.now, actions: &agent.actions)
    }
    try! udp.on(MessageID.reportBatchRequest, as: Lars_ReportStatusRequest.self) { request, message in
        agent.core.reportBatch(request, secret: ReportSecret.extract(from: message.body),
                               source: source(message.connection), now: agent.clock.now, actions: &agent.actions)
    }
    try! udp.on(MessageID.apiGetRouteRequest, as: Lars_GetRouteRequest.self) { request, message in
        agent.lastGetRoute = (request.modid, request.cmdid)
        agent.core.getRoute(request, from: message.connection, source: source(message.connection),
                            now: agent.clock.now, actions: &agent.actions)
    }
    udp.freeze()
    let names = MessageRouter<Int>()
    try! names.on(MessageID.getRouteResponse, as: Lars_GetRouteResponse.self) { response, _ in
        agent.core.routeArrived(response, now: agent.clock.now, actions: &agent.actions)
    }
    names.freeze()
    return (udp, names)
}

let udpIDs: [Int32] = [
    MessageID.getHostRequest.rawValue, MessageID.getHostByKeyRequest.rawValue, MessageID.reportRequest.rawValue,
    MessageID.apiGetRouteRequest.rawValue, MessageID.getHostBatchRequest.rawValue,
    MessageID.reportBatchRequest.rawValue,
]

func smallHost(_ input: inout FuzzInput) -> Lars_HostInfo {
    var host = Lars_HostInfo()
    host.ip = Int32(0x7f00_0001) + Int32(input.choice(4))
    host.port = input.choice(8) == 0 ? Int32(bitPattern: input.uint32()) : 9000 + Int32(input.choice(4))
    return host
}

/// A body for `id`: raw bytes, or (most of the time) the id's message built from the input.
func body(for id: Int32, _ input: inout FuzzInput) -> [UInt8] {
    if input.choice(4) == 0 { return input.bytes() }
    let modid = Int32(input.choice(4)), cmdid = Int32(input.choice(3))
    switch id {
    case MessageID.getHostRequest.rawValue:
        var m = Lars_GetHostRequest()
        (m.seq, m.modid, m.cmdid) = (input.uint32(), modid, cmdid)
        return try! m.serializedBytes()
    case MessageID.getHostByKeyRequest.rawValue:
        var m = Switchyard_Lb_GetHostByKeyRequest()
        (m.seq, m.modid, m.cmdid, m.key) = (input.uint32(), modid, cmdid, Data(input.bytes(limit: 16)))
        return try! m.serializedBytes()
    case MessageID.getHostBatchRequest.rawValue:
        var m = Switchyard_Lb_GetHostBatchRequest()
        m.seq = input.uint32()
        // Up to a little past the agent's limit (32), so refusals are reached too.
        m.items = (0..<input.choice(36)).map { _ in
            var item = Switchyard_Lb_GetHostBatchItem()
            (item.modid, item.cmdid) = (Int32(input.choice(4)), Int32(input.choice(3)))
            if input.choice(2) == 0 { item.key = Data(input.bytes(limit: 8)) }
            return item
        }
        return try! m.serializedBytes()
    case MessageID.reportRequest.rawValue:
        var m = Lars_ReportRequest()
        (m.modid, m.cmdid, m.host, m.retcode) = (modid, cmdid, smallHost(&input), Int32(input.choice(5)) - 1)
        return try! m.serializedBytes()
    case MessageID.reportBatchRequest.rawValue:
        var m = Lars_ReportStatusRequest()
        (m.modid, m.cmdid) = (modid, cmdid)
        // Up to a little past the agent's limits (64 results, 4,096 calls), so refusals are reached too.
        m.results = (0..<input.choice(68)).map { _ in
            var result = Lars_HostCallResult()
            let host = smallHost(&input)
            (result.ip, result.port) = (host.ip, host.port)
            result.succ = input.choice(8) == 0 ? input.uint32() : UInt32(input.choice(80))
            result.err = UInt32(input.choice(20))
            return result
        }
        return try! m.serializedBytes()
    case MessageID.apiGetRouteRequest.rawValue:
        var m = Lars_GetRouteRequest()
        (m.modid, m.cmdid) = (modid, cmdid)
        return try! m.serializedBytes()
    case MessageID.getRouteResponse.rawValue:
        var m = Lars_GetRouteResponse()
        (m.modid, m.cmdid) = (modid, cmdid)
        m.host = (0..<input.choice(6)).map { _ in smallHost(&input) }
        return try! m.serializedBytes()
    default:
        return input.bytes()
    }
}

/// The replies of the last step answer its request; given hosts are the module's.
func check(_ agent: Agent) {
    for action in agent.actions {
        switch action {
        case .replyHost(let response, let byKey, _):
            guard let request = agent.lastGetHost else {
                invariant(false, "a GetHost reply without a GetHost")
                return
            }
            let (seq, modid, cmdid, key) = request
            invariant(response.seq == seq && response.modid == modid && response.cmdid == cmdid && byKey == key,
                      "GetHost reply does not echo its request")
            if response.retcode == LarsReturnCode.success {
                let hosts = agent.core.balancer(for: RouteKey(modid: modid, cmdid: cmdid))?.hosts ?? []
                invariant(hosts.contains { $0.wireIP == response.host.ip && Int32($0.port) == response.host.port },
                          "GetHost gave out a host the module does not have")
            }
        case .replyBatch(let response, _):
            guard let request = agent.lastBatch else {
                invariant(false, "a batch reply without a batch")
                return
            }
            invariant(response.seq == request.seq, "batch reply does not echo its seq")
            let limit = agent.core.configuration.maxBatchItems
            if request.items.isEmpty || request.items.count > limit {
                invariant(response.retcode == LarsReturnCode.systemError && response.answers.isEmpty,
                          "a batch of \(request.items.count) items served (limit \(limit))")
            } else {
                invariant(response.retcode == LarsReturnCode.success && response.answers.count == request.items.count,
                          "a batch of \(request.items.count) items got \(response.answers.count) answers")
                for (item, answer) in zip(request.items, response.answers) {
                    invariant(answer.seq == request.seq && answer.modid == item.modid && answer.cmdid == item.cmdid,
                              "a batch answer out of order")
                    if answer.retcode == LarsReturnCode.success {
                        let hosts = agent.core.balancer(for: RouteKey(modid: item.modid, cmdid: item.cmdid))?.hosts
                        invariant((hosts ?? []).contains {
                            $0.wireIP == answer.host.ip && Int32($0.port) == answer.host.port
                        }, "a batch gave out a host the module does not have")
                    }
                }
                let bytes = (try? response.serializedBytes()) ?? []
                invariant(bytes.count <= LarsFrameLimit.maxDatagramBody, "a batch reply larger than a datagram")
            }
        case .replyRoute(let response, _):
            guard let request = agent.lastGetRoute else {
                invariant(false, "a GetRoute reply without a GetRoute")
                return
            }
            let (modid, cmdid) = request
            invariant(response.modid == modid && response.cmdid == cmdid, "GetRoute reply for another route")
        case .sendReport(let report):
            invariant(!report.results.isEmpty, "an empty report sent")
        case .askNameService, .log:
            break
        }
    }
}

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzz(_ data: UnsafePointer<UInt8>, _ size: Int) -> Int32 {
    var input = FuzzInput(data, size)
    let agent = Agent()
    let (udp, names) = makeRouters(agent)
    var arrivedModules = Set<RouteKey>()
    while !input.isAtEnd {
        agent.actions.removeAll(keepingCapacity: true)
        agent.lastGetHost = nil
        agent.lastGetRoute = nil
        agent.lastBatch = nil
        switch input.choice(12) {
        case 0...5:
            let id = messageID(&input, routed: udpIDs)
            dispatch(udp, id: id, body: body(for: id, &input), connection: input.choice(4))
        case 6:
            let id = messageID(&input, routed: [MessageID.getRouteResponse.rawValue])
            let bytes = body(for: id, &input)
            if dispatch(names, id: id, body: bytes, connection: 0),
               let response = try? Lars_GetRouteResponse(serializedBytes: bytes) {
                arrivedModules.insert(RouteKey(modid: response.modid, cmdid: response.cmdid))
            }
        case 7: agent.core.nameServiceConnected(now: agent.clock.now, actions: &agent.actions)
        case 8: agent.core.nameServiceLost(actions: &agent.actions)
        case 9: agent.core.refreshRoutes(now: agent.clock.now, actions: &agent.actions)
        case 10: agent.core.flushReports(timestamp: input.uint32(), actions: &agent.actions)
        default: agent.clock.advance(&input)
        }
        check(agent)
        // Requests never grow the table past maxModules (routes the name service sends add their own).
        let modules = agent.core.statistics.modules
        invariant(modules <= agent.core.configuration.maxModules + arrivedModules.count,
                  "\(modules) modules, limit \(agent.core.configuration.maxModules)")
    }
    return 0
}
