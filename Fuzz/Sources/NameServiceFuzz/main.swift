// libFuzzer target for the name service: its two routes (GetRouteRequest, RegisterHostRequest) registered on a
// MessageRouter the way NameService registers them, driving NameServiceCore on a mock clock, with the shell's other
// inputs in between: connections closing, database loads, expiry ticks and snapshot rebuilds, the replicas' rows
// (writes taken, written or failed, rows read back or made up), owner tokens, and a parent's answers (the core has a
// parent). Built by scripts/fuzz
// (swift build --sanitize=fuzzer --sanitize=address in Fuzz/); NameServiceCore is internal (@testable import).
//
// Checked after every step: each reply decodes and answers its request's route, pushes go only to open
// connections, and the registration count stays within its limit.
import FuzzSupport
import LarsProtocol
import LoadBalancing
import Messaging
@testable import NameService
import Reactor
import RouteStore

/// The core and what the last input produced; the router's handlers reach it through this box.
final class Names: @unchecked Sendable {
    // @unchecked Sendable: libFuzzer runs one input at a time on one thread.
    var core: NameServiceCore = {
        var configuration = NameServiceConfiguration(
            maxRegistrationTTL: .seconds(60), maxRegistrations: 6, maxSubscriptionsPerConnection: 3)
        configuration.maxRegistrationsPerSource = 4
        configuration.maxRegistrationsPerRoute = 3
        configuration.parent = ClientEndpoint(host: "127.0.0.1", port: 1)
        configuration.maxChainHops = 2
        return NameServiceCore(limits: NameServiceCore.Limits(configuration))
    }()
    let start = ContinuousClock.now
    var clock = FuzzClock()
    var actions: [NameServiceCore.Action] = []
    var lastRoute: RouteKey?
    /// The HostRegistration table as the writes left it (the last write of a key wins).
    var table: [NameServiceCore.RegistrationID: NameServiceCore.StoredRegistration] = [:]
    var now: ContinuousClock.Instant { start.advanced(by: clock.elapsed) }
}

/// A loopback source address per fuzzed connection (connections 0 and 2 share one, so the per-source limit is hit).
func source(_ connection: UInt64) -> UInt32 { 0x7F00_0001 &+ UInt32(truncatingIfNeeded: connection & 1) }

func makeRouter(_ names: Names) -> MessageRouter<UInt64> {
    let router = MessageRouter<UInt64>()
    try! router.on(MessageID.getRouteRequest, as: Lars_GetRouteRequest.self) { request, message in
        let key = RouteKey(modid: request.modid, cmdid: request.cmdid)
        names.lastRoute = key
        names.actions += names.core.getRoute(key, from: message.connection)
    }
    try! router.on(MessageID.registerHostRequest, as: Switchyard_Lb_RegisterHostRequest.self) { request, message in
        names.actions += names.core.register(request, from: message.connection, source: source(message.connection),
                                             now: names.now)
    }
    router.freeze()
    return router
}

let routedIDs = [MessageID.getRouteRequest.rawValue, MessageID.registerHostRequest.rawValue]

func body(for id: Int32, _ input: inout FuzzInput) -> [UInt8] {
    if input.choice(4) == 0 { return input.bytes() }
    let modid = Int32(input.choice(4)), cmdid = Int32(input.choice(3))
    switch id {
    case MessageID.getRouteRequest.rawValue:
        var m = Lars_GetRouteRequest()
        (m.modid, m.cmdid) = (modid, cmdid)
        return try! m.serializedBytes()
    case MessageID.registerHostRequest.rawValue:
        var m = Switchyard_Lb_RegisterHostRequest()
        (m.modid, m.cmdid) = (modid, cmdid)
        m.ip = input.choice(8) == 0 ? Int32(bitPattern: input.uint32()) : 0x0a00_0001 + Int32(input.choice(4))
        m.port = input.choice(8) == 0 ? Int32(bitPattern: input.uint32()) : 8000 + Int32(input.choice(3))
        m.ttlMs = input.choice(4) == 0 ? input.uint32() : UInt32(input.choice(4)) * 20_000
        if input.choice(3) == 0 { m.token = input.choice(2) == 0 ? "t\(modid)" : "wrong" }
        return try! m.serializedBytes()
    default:
        return input.bytes()
    }
}

func randomEntries(_ input: inout FuzzInput) -> [RouteEntry] {
    (0..<input.choice(8)).map { _ in
        RouteEntry(key: RouteKey(modid: Int32(input.choice(4)), cmdid: Int32(input.choice(3))),
                   host: Host(ip: 0x0b00_0001 + UInt32(input.choice(4)), port: UInt16(7000 + input.choice(3))))
    }
}

func check(_ names: Names, open: Set<UInt64>) {
    for action in names.actions {
        switch action {
        case .send(let connection, let id, let body):
            invariant(open.contains(connection), "a reply to a connection that is not open")
            if id == .getRouteResponse {
                let reply = try? Lars_GetRouteResponse(serializedBytes: body)
                invariant(reply != nil, "GetRouteResponse does not decode")
                invariant(reply.map { RouteKey(modid: $0.modid, cmdid: $0.cmdid) } == names.lastRoute,
                          "GetRouteResponse for another route")
            } else {
                invariant(id == .registerHostResponse, "unexpected reply id \(id)")
                invariant((try? Switchyard_Lb_RegisterHostResponse(serializedBytes: body)) != nil,
                          "RegisterHostResponse does not decode")
            }
        case .push(let connection, _):
            invariant(open.contains(connection), "a push to a closed connection")
        case .askParent(let key, let hops):
            invariant(Int(hops) <= names.core.limits.maxChainHops, "asked the parent past the hop limit")
            invariant(hops >= 1, "a parent request with no hop")
            _ = key
        case .rebuild, .log:
            break
        }
    }
    invariant(names.core.registrationCount >= 0 && names.core.registrationCount <= names.core.limits.maxRegistrations,
              "registration count \(names.core.registrationCount)")
}

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzz(_ data: UnsafePointer<UInt8>, _ size: Int) -> Int32 {
    var input = FuzzInput(data, size)
    let names = Names()
    let router = makeRouter(names)
    var open: Set<UInt64> = []
    var version: Int64 = 0
    while !input.isAtEnd {
        names.actions.removeAll(keepingCapacity: true)
        names.lastRoute = nil
        switch input.choice(11) {
        case 0...4:
            let connection = UInt64(input.choice(4))
            open.insert(connection)
            let id = messageID(&input, routed: routedIDs)
            dispatch(router, id: id, body: body(for: id, &input), connection: connection)
        case 5:
            let connection = UInt64(input.choice(4))
            open.remove(connection)
            names.core.connectionClosed(connection)
        case 6:
            version += Int64(input.choice(3))
            let changed = Set(randomEntries(&input).map(\.key))
            names.actions += names.core.databaseLoaded(version: version, entries: randomEntries(&input),
                                                       changed: changed)
        case 7: names.actions += names.core.tick(now: names.now)
        case 8:
            if input.choice(2) == 0 {
                names.actions += names.core.rebuildNow()
            } else if let rebuild = names.core.takeRebuild() {
                // A change may come in between taking the rebuild and installing it (built off the lock).
                if input.choice(2) == 0 {
                    names.actions += names.core.register(
                        (try? Switchyard_Lb_RegisterHostRequest(serializedBytes: body(
                            for: MessageID.registerHostRequest.rawValue, &input))) ?? .init(),
                        from: UInt64(input.choice(4)), source: source(UInt64(input.choice(4))), now: names.now)
                    names.actions.removeAll()
                }
                names.actions += names.core.install(rebuild.build(), from: rebuild)
            }
        case 9:
            switch input.choice(6) {
            case 0:
                if let writes = names.core.takeWrites(now: names.now) {
                    if input.choice(4) == 0 {
                        names.core.writesFailed(writes)
                    } else {
                        for row in writes.rows { names.table[row.id] = row }
                        names.core.writesDone(writes)
                    }
                }
            case 1:
                // The table read back (all of it, or a part), as another replica would see it too.
                let rows = Array(names.table.values)
                let complete = input.choice(2) == 0
                names.actions += names.core.registrationsLoaded(
                    complete ? rows : Array(rows.prefix(input.choice(rows.count + 1))), complete: complete,
                    writtenThrough: names.core.writtenEpoch, now: names.now)
            case 2:
                // A row another replica wrote.
                let key = RouteKey(modid: Int32(input.choice(4)), cmdid: Int32(input.choice(3)))
                let host = Host(ip: 0x0c00_0001 + UInt32(input.choice(4)), port: UInt16(6000 + input.choice(2)))
                let row = NameServiceCore.StoredRegistration(
                    id: .init(key: key, host: host), expiry: names.now.advanced(by: .milliseconds(input.choice(40_000))),
                    source: UInt32(input.choice(3)),
                    load: input.choice(2) == 0 ? HostLoad(load: UInt32(input.choice(3)), capacity: 2) : nil,
                    weight: UInt32(input.choice(3)), takenBack: input.choice(3) == 0)
                names.actions += names.core.registrationsLoaded([row], complete: false, writtenThrough: 0,
                                                                now: names.now)
            case 3:
                var tokens: [Int32: String] = [:]
                for modid in 0..<4 where input.choice(3) == 0 { tokens[Int32(modid)] = "t\(modid)" }
                names.core.tokensLoaded(tokens)
            case 4:
                let key = RouteKey(modid: Int32(input.choice(4)), cmdid: Int32(input.choice(3)))
                let hosts = (0..<input.choice(4)).map { Host(ip: 0x0d00_0001 + UInt32($0), port: 5000) }
                names.actions += names.core.parentAnswered(key, hosts: hosts, loads: [:])
            default:
                let connection = UInt64(input.choice(4))
                open.insert(connection)
                let key = RouteKey(modid: Int32(input.choice(4)), cmdid: Int32(input.choice(3)))
                names.lastRoute = key
                names.actions += names.core.getRoute(key, from: connection, hops: UInt32(input.choice(4)))
            }
        default: names.clock.advance(&input)
        }
        check(names, open: open)
    }
    return 0
}
