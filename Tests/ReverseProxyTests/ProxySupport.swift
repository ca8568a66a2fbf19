import Foundation
import LoadBalanceAgent
import LoadBalanceClient
import LoadBalancing
import Logging
import Metrics
import NameService
import Reactor
import ReverseProxy
import RouteStore
import RouteTestSupport
import Storage
import Synchronization
import TestSupport
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// What a test backend does with a connection.
enum BackendBehaviour: Sendable {
    /// Sends back every byte; on the client's FIN, finishes sending and closes.
    case echo
    /// Sends its own port (2 bytes, big-endian) on connect, then echoes.
    case whoami
    /// Reads and never answers.
    case silent
    /// Keeps the first bytes each connection sends (up to 64) and echoes.
    case recordFirstBytes
}

/// A backend on the fleet's loops: a `TCPServer` on a fixed port, which can stop listening and listen again.
final class Backend: Sendable {
    let group: EventLoopGroup
    let behaviour: BackendBehaviour
    let port: Int
    private let server = Mutex<TCPServer?>(nil)
    let firstBytes = Shared<[[UInt8]]>([])
    let connections = EventCounter()

    init(group: EventLoopGroup, behaviour: BackendBehaviour, port: Int = 0) throws {
        self.group = group
        self.behaviour = behaviour
        let made = Backend.makeServer(group: group, behaviour: behaviour, port: port, firstBytes: firstBytes,
                                      connections: connections)
        self.port = Int(try made.start().port)
        server.withLock { $0 = made }
    }

    var host: LoadBalancing.Host { LoadBalancing.Host(address: "127.0.0.1", port: port)! }

    private static func makeServer(group: EventLoopGroup, behaviour: BackendBehaviour, port: Int,
                                   firstBytes: Shared<[[UInt8]]>, connections: EventCounter) -> TCPServer {
        let recorded = Shared<[UInt64: [UInt8]]>([:])
        return TCPServer(group: group, configuration: ServerConfiguration(host: "127.0.0.1", port: port),
                         callbacks: ConnectionCallbacks(
            onConnect: { c in
                connections.signal()
                if case .whoami = behaviour {
                    let p = c.localAddress.port
                    _ = c.send([UInt8(p >> 8), UInt8(p & 0xFF)])
                }
            },
            onData: { c, bytes in
                let view = Array(bytes.readableView)
                bytes.consumeAll()
                switch behaviour {
                case .silent: return
                case .recordFirstBytes:
                    let done = recorded.update { r -> [UInt8]? in
                        var kept = r[c.id] ?? []
                        guard kept.count < 64 else { return nil }
                        kept += view.prefix(64 - kept.count)
                        r[c.id] = kept
                        return kept.count >= 28 ? kept : nil
                    }
                    if let done { firstBytes.update { $0.append(done) } }
                case .echo, .whoami: break
                }
                _ = c.send(view)
            },
            onClose: { c in
                if case .recordFirstBytes = behaviour, let kept = recorded.update({ $0.removeValue(forKey: c.id) }),
                   kept.count < 28 {
                    firstBytes.update { $0.append(kept) }
                }
            }))
    }

    /// Bytes its connections have queued and the peer has not taken (read on their loops).
    func queuedOutputBytes() -> Int {
        guard let s = server.withLock({ $0 }) else { return 0 }
        return s.connectionIDs.reduce(0) { sum, id in
            guard let c = s.connection(id: id) else { return sum }
            return sum + ((try? onLoop(c.loop) { c.queuedOutputBytes }) ?? 0)
        }
    }

    /// Stops listening and closes its connections.
    func stop() {
        let s = server.withLock { s -> TCPServer? in defer { s = nil }; return s }
        s?.shutdown(timeout: .seconds(1))
    }

    /// Listens on the same port again.
    func restart() throws {
        let made = Backend.makeServer(group: group, behaviour: behaviour, port: port, firstBytes: firstBytes,
                                      connections: connections)
        try made.start()
        server.withLock { $0 = made }
    }
}

/// A name service on SQLite, an agent, backends and a proxy, all in this process on loopback: what a proxy runs
/// against in production, nothing faked.
final class ProxyFleet: @unchecked Sendable {
    // @unchecked Sendable: set up once in `start`, then only read.
    let modid: Int32 = uniqueModid()
    let cmdid: Int32 = 1
    var pool: ConnectionPool!
    var servicesGroup: EventLoopGroup!
    var names: NameService!
    var namesTask: Task<Void, any Error>!
    var agent: LoadBalanceAgent!
    var agentPorts: [Int] = []
    var backends: [Backend] = []
    var proxyGroup: EventLoopGroup!
    var proxy: ProxyServer!
    var proxyPort: UInt16 = 0

    /// - Parameter otherHosts: Hosts of the route besides `backends` (backends the test runs itself).
    static func start(poller: PollerKind, backends behaviours: [BackendBehaviour],
                      otherHosts: [LoadBalancing.Host] = [], balancer: BalancerSettings = BalancerSettings(),
                      metrics: MetricsFactory = MetricsSystem.factory, logger: Logger = quietLogger,
                      configure: (inout ProxyConfiguration) -> Void = { _ in }) async throws -> ProxyFleet {
        let fleet = ProxyFleet()
        fleet.pool = try await makePool(temporarySQLiteURL("proxy"))
        fleet.servicesGroup = try EventLoopGroup(ioLoops: 1)
        let key = RouteKey(modid: fleet.modid, cmdid: fleet.cmdid)
        for behaviour in behaviours {
            let backend = try Backend(group: fleet.servicesGroup, behaviour: behaviour)
            fleet.backends.append(backend)
            _ = try await RouteAdmin.addHost(backend.host, to: key, on: fleet.pool)
        }
        for host in otherHosts { _ = try await RouteAdmin.addHost(host, to: key, on: fleet.pool) }
        let names = NameService(group: fleet.servicesGroup,
                                configuration: NameServiceConfiguration(port: 0, pollInterval: .milliseconds(100)),
                                pool: fleet.pool, logger: quietLogger)
        let namesPort = Int(try names.start().port)
        fleet.names = names
        fleet.namesTask = Task { try await names.run() }
        let agent = LoadBalanceAgent(group: fleet.servicesGroup, configuration: AgentConfiguration(
            ports: [0, 0, 0], nameServicePort: namesPort, reporterPort: try freePort(), balancer: balancer),
            logger: quietLogger)
        fleet.agentPorts = try agent.start().map { Int($0.port) }
        fleet.agent = agent
        // The agent has the route once a GetRoute through it lists every backend.
        let client = try LoadBalanceClient(agentPorts: fleet.agentPorts, timeout: .seconds(2))
        let ready = await eventually(timeout: .seconds(20)) {
            (try? await client.getRoute(modid: fleet.modid, cmdid: fleet.cmdid).count)
                == behaviours.count + otherHosts.count
        }
        await client.shutdown()
        #expect(ready, "the agent never learnt the route")
        fleet.proxyGroup = try EventLoopGroup(ioLoops: 2, configuration: LoopConfiguration(poller: poller))
        var configuration = ProxyConfiguration(
            host: "127.0.0.1", routes: [ProxyRoute(port: 0, modid: fleet.modid, cmdid: fleet.cmdid)],
            agentPorts: fleet.agentPorts, agentTimeout: .seconds(5))
        configure(&configuration)
        fleet.proxy = ProxyServer(group: fleet.proxyGroup, configuration: configuration, logger: logger,
                                  metricsFactory: metrics)
        fleet.proxyPort = try fleet.proxy.start()[0].port
        return fleet
    }

    func stop() async {
        let proxy = proxy!, proxyGroup = proxyGroup!, agent = agent!, servicesGroup = servicesGroup!
        let backends = self.backends
        await onThread {
            proxy.shutdown()
            proxyGroup.shutdown()
            agent.shutdown()
            for b in backends { b.stop() }
        }
        namesTask.cancel()
        _ = await namesTask.result
        await onThread { servicesGroup.shutdown() }
        await pool.close()
    }

    /// The agent's view of the route's hosts.
    func overloadedHosts() async -> [LoadBalancing.Host] {
        await agent.balancerSnapshot(modid: modid, cmdid: cmdid)?.overloadedHosts ?? []
    }
}

/// A port nothing listens on (bound, then released).
func freePort() throws -> Int {
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    defer { close(fd) }
    var sin = sockaddr_in()
    sin.sin_family = sa_family_t(AF_INET)
    inet_pton(AF_INET, "127.0.0.1", &sin.sin_addr)
    _ = withUnsafePointer(to: &sin) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
    }
    return Int(localPort(of: fd))
}

/// Runs blocking work on its own thread (never on the concurrency pool the services' tasks need).
func onThread<T: Sendable>(_ body: @escaping @Sendable () -> T) async -> T {
    await withCheckedContinuation { continuation in
        let thread = Thread { continuation.resume(returning: body()) }
        thread.start()
    }
}

/// Many connections driven at once from one thread with poll(2): each sends its payload in random pieces while
/// reading what comes back, and must get back exactly what it sent. Returns the connections whose bytes differ or
/// did not all come back (with why).
func echoThroughProxy(port: UInt16, payloads: [[UInt8]], halfClose: Bool = false, seconds: Double = 60)
    -> [String]
{
    struct Conn {
        var fd: Int32
        var payload: [UInt8]
        var sent = 0
        var received: [UInt8] = []
        var shut = false
        var done = false
    }
    var conns: [Conn] = []
    var failures: [String] = []
    for payload in payloads {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_NONBLOCK.rawValue), 0)
        var sin = sockaddr_in()
        sin.sin_family = sa_family_t(AF_INET)
        sin.sin_port = port.bigEndian
        inet_pton(AF_INET, "127.0.0.1", &sin.sin_addr)
        _ = withUnsafePointer(to: &sin) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size))
            }
        }
        conns.append(Conn(fd: fd, payload: payload))
    }
    var rng = SystemRandomNumberGenerator()
    let deadline = Date().addingTimeInterval(seconds * testTimeScale)
    var buffer = [UInt8](repeating: 0, count: 256 << 10)
    while conns.contains(where: { !$0.done }) && Date() < deadline {
        var fds = conns.map { c -> pollfd in
            var events = Int16(POLLIN)
            if c.sent < c.payload.count { events |= Int16(POLLOUT) }
            return pollfd(fd: c.done ? -1 : c.fd, events: events, revents: 0)
        }
        let n = poll(&fds, nfds_t(fds.count), 100)
        if n <= 0 { continue }
        for i in conns.indices where !conns[i].done && fds[i].revents != 0 {
            if fds[i].revents & Int16(POLLOUT) != 0 && conns[i].sent < conns[i].payload.count {
                let left = conns[i].payload.count - conns[i].sent
                let piece = min(left, Int.random(in: 1...(96 << 10), using: &rng))
                let w = conns[i].payload.withUnsafeBytes { send(conns[i].fd, $0.baseAddress! + conns[i].sent, piece,
                                                                Int32(MSG_NOSIGNAL)) }
                if w > 0 { conns[i].sent += w }
            }
            if halfClose && conns[i].sent == conns[i].payload.count && !conns[i].shut {
                shutdown(conns[i].fd, Int32(SHUT_WR))
                conns[i].shut = true
            }
            if fds[i].revents & Int16(POLLIN | POLLHUP | POLLERR) != 0 {
                let r = recv(conns[i].fd, &buffer, buffer.count, 0)
                if r > 0 {
                    conns[i].received += buffer[0..<r]
                    if !halfClose && conns[i].received.count >= conns[i].payload.count { conns[i].done = true }
                } else if r == 0 || (r < 0 && errno != EAGAIN) {
                    conns[i].done = true
                    if !halfClose || r < 0 { failures.append("connection \(i): closed early (\(r), errno \(errno))") }
                }
            }
        }
    }
    for (i, c) in conns.enumerated() {
        if !c.done { failures.append("connection \(i): unfinished, \(c.received.count)/\(c.payload.count) back") }
        else if c.received != c.payload {
            failures.append("connection \(i): \(c.received.count) bytes back of \(c.payload.count), or differing")
        }
        close(c.fd)
    }
    return failures
}

func randomBytes(_ count: Int) -> [UInt8] {
    var rng = SystemRandomNumberGenerator()
    var bytes = [UInt8](repeating: 0, count: count)
    for i in stride(from: 0, to: count, by: 8) {
        let v = rng.next()
        for j in 0..<min(8, count - i) { bytes[i + j] = UInt8(truncatingIfNeeded: v >> (j * 8)) }
    }
    return bytes
}

/// A backend that accepts, reads what arrives, and resets the connection (SO_LINGER 0) without answering: on a
/// thread of its own, with blocking sockets.
final class ResettingBackend: @unchecked Sendable {
    // @unchecked Sendable: `fd` is set once; `stopped` is behind a lock.
    let port: Int
    private let fd: Int32
    private let stopped = Shared<Bool>(false)
    private let finished = DispatchSemaphore(value: 0)

    init() throws {
        let listener = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        fd = listener
        var one: Int32 = 1
        setsockopt(listener, SOL_SOCKET, SO_REUSEADDR, &one, socklen_t(MemoryLayout<Int32>.size))
        var sin = sockaddr_in()
        sin.sin_family = sa_family_t(AF_INET)
        inet_pton(AF_INET, "127.0.0.1", &sin.sin_addr)
        let bound = withUnsafePointer(to: &sin) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                bind(listener, $0, socklen_t(MemoryLayout<sockaddr_in>.size))
            }
        }
        guard bound == 0, listen(listener, 64) == 0 else { throw TestFailure("cannot listen: errno \(errno)") }
        port = Int(localPort(of: listener))
        let stopped = self.stopped
        let finished = self.finished
        Thread {
            defer { finished.signal() }
            while !stopped.get() {
                var p = pollfd(fd: listener, events: Int16(POLLIN), revents: 0)
                guard poll(&p, 1, 50) > 0 else { continue }
                let conn = accept(listener, nil, nil)
                guard conn >= 0 else { continue }
                var buffer = [UInt8](repeating: 0, count: 4096)
                _ = recv(conn, &buffer, buffer.count, 0)
                var option = linger(l_onoff: 1, l_linger: 0)
                setsockopt(conn, SOL_SOCKET, SO_LINGER, &option, socklen_t(MemoryLayout<linger>.size))
                close(conn)
            }
        }.start()
    }

    var host: LoadBalancing.Host { LoadBalancing.Host(address: "127.0.0.1", port: port)! }

    func stop() {
        stopped.set(true)
        finished.wait()
        close(fd)
    }
}

/// CPU the threads of `group`'s loops use over `seconds` (after a scenario: nothing may spin). Only those threads:
/// other suites run beside this one.
func loopCPUSeconds(_ group: EventLoopGroup, over seconds: Double) async -> Double {
    func now() -> UInt64 {
        group.allLoops.reduce(0) { sum, loop in
            let path = "/proc/self/task/\(loop.kernelThreadID)/schedstat"
            let text = (try? String(contentsOfFile: path, encoding: .utf8)) ?? ""
            return sum + (UInt64(text.split(separator: " ").first ?? "") ?? 0)
        }
    }
    let before = now()
    _ = await onThread { usleep(useconds_t(seconds * 1_000_000)) }
    return Double(now() - before) / 1e9
}
