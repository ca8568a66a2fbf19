import Foundation
import LarsProtocol
import LoadBalanceAgent
import LoadBalanceClient
import LoadBalancing
import Logging
import Messaging
import Reactor
import Synchronization
import TestSupport
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// A Mutex in a class, so closures can share it.
final class Locked<T: Sendable>: Sendable {
    private let mutex: Mutex<T>
    init(_ value: T) { mutex = Mutex(value) }
    func withLock<R: Sendable>(_ body: (inout T) -> R) -> R { mutex.withLock { body(&$0) } }
}

/// A counter shared with closures.
final class Counter: Sendable {
    private let value = Atomic<Int>(0)
    func increment() { value.wrappingAdd(1, ordering: .relaxed) }
    var count: Int { value.load(ordering: .relaxed) }
}

/// A name service for tests: answers GetRouteRequest from a table, and pushes a route to every connection.
final class FakeNameService: Sendable {
    let routes: Locked<[RouteKey: [LoadBalancing.Host]]>
    /// The hosts' weights it hands out (HostInfo field 5); absent: none sent (1).
    let weights = Locked<[LoadBalancing.Host: UInt32]>([:])
    let requests = Counter()
    /// The routes asked for (each once, however often).
    let requestedKeys = Locked<Set<RouteKey>>([])
    let connections = Locked<[TCPConnection]>([])
    let server: FramedServer
    let port: UInt16

    init(group: EventLoopGroup, routes: [RouteKey: [LoadBalancing.Host]], listenPort: Int = 0) throws {
        let table = Locked(routes)
        self.routes = table
        let requests = self.requests
        let weights = self.weights
        let requestedKeys = self.requestedKeys
        let connections = self.connections
        let router = MessageRouter<TCPConnection>()
        try router.on(MessageID.getRouteRequest, as: Lars_GetRouteRequest.self) { request, message in
            requests.increment()
            let key = RouteKey(modid: request.modid, cmdid: request.cmdid)
            requestedKeys.withLock { _ = $0.insert(key) }
            message.connection.send(FakeNameService.response(key, table.withLock { $0[key] } ?? [],
                                                             weights: weights.withLock { $0 }),
                                    id: MessageID.getRouteResponse)
        }
        server = FramedServer(
            group: group,
            configuration: FramedServerConfiguration(server: ServerConfiguration(port: listenPort)),
            router: router,
            onConnect: { c in connections.withLock { $0.append(c) } },
            onClose: { c in connections.withLock { $0.removeAll { $0 === c } } })
        port = try server.start().port
    }

    static func response(_ key: RouteKey, _ hosts: [LoadBalancing.Host],
                         weights: [LoadBalancing.Host: UInt32] = [:]) -> Lars_GetRouteResponse {
        var response = Lars_GetRouteResponse()
        response.modid = key.modid
        response.cmdid = key.cmdid
        response.host = hosts.map {
            var info = Lars_HostInfo()
            info.ip = $0.wireIP
            info.port = Int32($0.port)
            if let weight = weights[$0] { info.weight = weight }
            return info
        }
        return response
    }

    /// Changes a route and pushes it to every connected agent.
    func push(_ key: RouteKey, _ hosts: [LoadBalancing.Host]) {
        routes.withLock { $0[key] = hosts }
        for c in connections.withLock({ $0 }) { c.send(Self.response(key, hosts), id: MessageID.getRouteResponse) }
    }

    var connectionCount: Int { connections.withLock { $0.count } }

    func stop() { server.shutdown(timeout: .seconds(1)) }
}

/// A reporter for tests: keeps every ReportStatusRequest, and per host the counts of the last report that named it
/// (a report carries running window counts, Lars's semantics: the last one is what a reporter stores).
final class FakeReporter: Sendable {
    struct Totals: Sendable {
        var requests = 0
        var reports: [Lars_ReportStatusRequest] = []
        var succ: [LoadBalancing.Host: UInt64] = [:]
        var err: [LoadBalancing.Host: UInt64] = [:]
        var callers: Set<Int32> = []
        var modules: Set<RouteKey> = []
    }
    let totals = Locked(Totals())
    let server: FramedServer
    let port: UInt16

    init(group: EventLoopGroup) throws {
        let totals = self.totals
        let router = MessageRouter<TCPConnection>()
        try router.on(MessageID.reportStatusRequest, as: Lars_ReportStatusRequest.self) { request, _ in
            totals.withLock { t in
                t.requests += 1
                t.reports.append(request)
                t.callers.insert(request.caller)
                t.modules.insert(RouteKey(modid: request.modid, cmdid: request.cmdid))
                for r in request.results {
                    let host = LoadBalancing.Host(wireIP: r.ip, wirePort: r.port)!
                    t.succ[host] = UInt64(r.succ)
                    t.err[host] = UInt64(r.err)
                }
            }
        }
        server = FramedServer(group: group, configuration: FramedServerConfiguration(
            server: ServerConfiguration(port: 0)), router: router)
        port = try server.start().port
    }

    var snapshot: Totals { totals.withLock { $0 } }

    func stop() { server.shutdown(timeout: .seconds(1)) }
}

let testLogger = Logger(label: "test.agent", factory: { _ in SwiftLogNoOpLogHandler() })

/// A port nothing listens on (bound, then released).
func freeTCPPort() throws -> Int {
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    defer { close(fd) }
    var sin = sockaddr_in()
    sin.sin_family = sa_family_t(AF_INET)
    inet_pton(AF_INET, "127.0.0.1", &sin.sin_addr)
    _ = withUnsafePointer(to: &sin) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
    }
    var len = socklen_t(MemoryLayout<sockaddr_in>.size)
    _ = withUnsafeMutablePointer(to: &sin) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &len) }
    }
    return Int(UInt16(bigEndian: sin.sin_port))
}

/// A test's world: a group on the poller under test, a fake name service and reporter, an agent on port 0.
struct AgentWorld {
    let group: EventLoopGroup
    let names: FakeNameService
    let reporter: FakeReporter
    let agent: LoadBalanceAgent
    let ports: [Int]
    let client: LoadBalanceClient

    static func make(poller: PollerKind, routes: [RouteKey: [LoadBalancing.Host]],
                     configure: (inout AgentConfiguration) -> Void = { _ in }) throws -> AgentWorld {
        let group = try EventLoopGroup(ioLoops: 2, configuration: LoopConfiguration(
            poller: poller, busyPoll: AgentConfiguration().busyPoll), placement: .roundRobin)
        let names = try FakeNameService(group: group, routes: routes)
        let reporter = try FakeReporter(group: group)
        var configuration = AgentConfiguration(
            ports: [0, 0, 0], nameServicePort: Int(names.port), reporterPort: Int(reporter.port),
            reportInterval: .milliseconds(200), routeRetryInterval: .milliseconds(200),
            initialBackoff: .milliseconds(50), maxBackoff: .milliseconds(200))
        configure(&configuration)
        let agent = LoadBalanceAgent(group: group, configuration: configuration, logger: testLogger)
        let ports = try agent.start().map { Int($0.port) }
        let client = try LoadBalanceClient(agentPorts: ports, timeout: .seconds(2), loop: group.ioLoops[1])
        return AgentWorld(group: group, names: names, reporter: reporter, agent: agent, ports: ports, client: client)
    }

    func shutdown() {
        client.close()
        agent.shutdown()
        names.stop()
        reporter.stop()
        group.shutdown()
    }
}

/// A plain blocking UDP socket: the peer side of the wire tests, independent of our encoder.
final class RawDatagramSocket {
    let fd: Int32

    /// `bindAddress`: the source address of what it sends (any of 127.0.0.0/8 works on Linux without setup).
    init(receiveTimeoutMs: Int = 2000, bindAddress: String? = nil) {
        fd = socket(AF_INET, Int32(SOCK_DGRAM.rawValue), 0)
        var tv = timeval(tv_sec: receiveTimeoutMs / 1000, tv_usec: (receiveTimeoutMs % 1000) * 1000)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        if let bindAddress {
            var sin = sockaddr_in()
            sin.sin_family = sa_family_t(AF_INET)
            inet_pton(AF_INET, bindAddress, &sin.sin_addr)
            let bound = withUnsafePointer(to: &sin) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                    bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size))
                }
            }
            precondition(bound == 0, "cannot bind \(bindAddress): errno \(errno)")
        }
    }

    /// Sends a Lars frame (header and body) in one datagram.
    func sendFrame(id: Int32, body: [UInt8], port: Int) {
        var frame = withUnsafeBytes(of: id.littleEndian) { Array($0) }
        frame += withUnsafeBytes(of: Int32(body.count).littleEndian) { Array($0) }
        send(frame + body, port: port)
    }

    /// The next datagram as (message id, body), or nil after the receive timeout.
    func receiveFrame() -> (id: Int32, body: [UInt8])? {
        guard let datagram = receive(), datagram.count >= 8 else { return nil }
        let id = datagram[0..<4].withUnsafeBytes { Int32(littleEndian: $0.loadUnaligned(as: Int32.self)) }
        return (id, Array(datagram[8...]))
    }

    deinit { close(fd) }

    func send(_ bytes: [UInt8], port: Int) {
        var sin = sockaddr_in()
        sin.sin_family = sa_family_t(AF_INET)
        sin.sin_port = UInt16(port).bigEndian
        inet_pton(AF_INET, "127.0.0.1", &sin.sin_addr)
        _ = bytes.withUnsafeBytes { raw in
            withUnsafePointer(to: &sin) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                    sendto(fd, raw.baseAddress, raw.count, 0, $0, socklen_t(MemoryLayout<sockaddr_in>.size))
                }
            }
        }
    }

    /// One datagram, or nil after the receive timeout.
    func receive() -> [UInt8]? {
        var buf = [UInt8](repeating: 0, count: 65_536)
        while true {
            let n = buf.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
            if n < 0 && errno == EINTR { continue }
            return n < 0 ? nil : Array(buf[0..<n])
        }
    }
}
