import Foundation
import LoadBalancing
import MetricsTestKit
import Reactor
import ReverseProxy
import TestSupport
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// Every poller, both ways of moving bytes.
let proxyCases: [(PollerKind, TunnelTransfer)] = PollerKind.allCases.flatMap { p in
    TunnelTransfer.allCases.map { (p, $0) }
}

@Suite("Reverse proxy over real sockets, through a real agent and name service", .serialized)
struct ProxySocketTests {
    @Test("byte-exact relay of 1 B, 64 KiB and 16 MiB payloads in random pieces, many connections at once",
          arguments: proxyCases)
    func byteExact(poller: PollerKind, transfer: TunnelTransfer) async throws {
        let fleet = try await ProxyFleet.start(poller: poller, backends: [.echo, .echo]) { $0.transfer = transfer }
        // select watches descriptors below 1024 only: this process holds four per proxied connection.
        let many = poller == .select ? 100 : 500
        // Mostly small ones (the many connections at once), every tenth 64 KiB, and one of 16 MiB.
        let payloads = (0..<many).map { i in randomBytes(i % 10 == 0 ? 64 << 10 : 1) } + [randomBytes(16 << 20)]
        let descriptors = SystemInfo.openDescriptorCount()
        let failures = await onThread { echoThroughProxy(port: fleet.proxyPort, payloads: payloads) }
        #expect(failures.isEmpty, "\(failures.prefix(5))")
        #expect(await eventually(timeout: .seconds(10)) { fleet.proxy.statistics.active == 0 })
        // Back to where they were, but for the empty pipes the loops keep for reuse (at most 16 each).
        let pipes = fleet.proxyGroup.ioLoops.count * 16 * 2
        #expect(await eventually(timeout: .seconds(10)) { SystemInfo.openDescriptorCount() <= descriptors + pipes })
        #expect(await loopCPUSeconds(fleet.proxyGroup, over: 0.5) < 0.05)
        let s = fleet.proxy.statistics
        #expect(s.accepted == payloads.count)
        #expect(s.reportedSuccesses == payloads.count)
        #expect(s.reportedFailures == 0)
        let total = UInt64(payloads.reduce(0) { $0 + $1.count })
        #expect(s.clientToBackendBytes == total)
        #expect(s.backendToClientBytes == total)
        await fleet.stop()
    }

    @Test("half-close: the client's FIN reaches the backend and the rest of the reply still comes back",
          arguments: proxyCases)
    func halfClose(poller: PollerKind, transfer: TunnelTransfer) async throws {
        let fleet = try await ProxyFleet.start(poller: poller, backends: [.echo]) { $0.transfer = transfer }
        let payloads = [randomBytes(1), randomBytes(300 << 10), randomBytes(3 << 20)]
        let failures = await onThread { echoThroughProxy(port: fleet.proxyPort, payloads: payloads, halfClose: true) }
        #expect(failures.isEmpty, "\(failures)")
        #expect(await eventually(timeout: .seconds(10)) { fleet.proxy.statistics.active == 0 })
        #expect(fleet.proxy.statistics.reportedSuccesses == 3)
        #expect(await loopCPUSeconds(fleet.proxyGroup, over: 0.5) < 0.05)
        await fleet.stop()
    }

    @Test("a client that resets mid-transfer: the backend side is closed, the backend is not blamed",
          arguments: proxyCases)
    func clientResets(poller: PollerKind, transfer: TunnelTransfer) async throws {
        let fleet = try await ProxyFleet.start(poller: poller, backends: [.echo]) { $0.transfer = transfer }
        let socket = try BlockingSocket(port: fleet.proxyPort, receiveTimeout: 10)
        _ = try await onThread { () -> Result<[UInt8], any Error> in
            Result {
                try socket.sendAll(randomBytes(256 << 10))
                return try socket.receive(exactly: 1000)
            }
        }.get()
        var option = linger(l_onoff: 1, l_linger: 0)
        setsockopt(socket.fd, SOL_SOCKET, SO_LINGER, &option, socklen_t(MemoryLayout<linger>.size))
        socket.close()
        #expect(await eventually(timeout: .seconds(10)) {
            fleet.proxy.statistics.active == 0 && fleet.proxy.statistics.reportedSuccesses == 1
        })
        #expect(fleet.proxy.statistics.reportedFailures == 0)
        #expect(await loopCPUSeconds(fleet.proxyGroup, over: 0.5) < 0.05)
        await fleet.stop()
    }

    @Test("a backend that resets before answering: the client is closed and the agent told it failed",
          arguments: proxyCases)
    func backendResets(poller: PollerKind, transfer: TunnelTransfer) async throws {
        let resetting = try ResettingBackend()
        defer { resetting.stop() }
        let fleet = try await ProxyFleet.start(poller: poller, backends: [], otherHosts: [resetting.host]) {
            $0.transfer = transfer
        }
        for _ in 0..<3 {
            let socket = try BlockingSocket(port: fleet.proxyPort, receiveTimeout: 10)
            try socket.sendAll(Array("request".utf8))
            #expect(await onThread { socket.seesClose() })
            socket.close()
        }
        #expect(await eventually(timeout: .seconds(10)) {
            fleet.proxy.statistics.active == 0 && fleet.proxy.statistics.reportedFailures == 3
        })
        #expect(fleet.proxy.statistics.reportedSuccesses == 0)
        await fleet.stop()
    }

    @Test("a backend stops listening: connections go to the other at once, the agent overloads it, it comes back",
          arguments: PollerKind.allCases)
    func backendGoesAway(poller: PollerKind) async throws {
        var balancer = BalancerSettings()
        balancer.continErrLimit = 3
        balancer.probeNum = 2
        balancer.overloadTimeout = .seconds(1)
        let fleet = try await ProxyFleet.start(poller: poller, backends: [.echo, .echo], balancer: balancer)
        let dead = fleet.backends[0]
        await onThread { dead.stop() }
        // Every connection is served (a refused connect is retried on the other backend).
        for _ in 0..<12 {
            let failures = await onThread { echoThroughProxy(port: fleet.proxyPort, payloads: [randomBytes(100)]) }
            #expect(failures.isEmpty, "\(failures)")
        }
        #expect(fleet.proxy.statistics.noBackend == 0)
        #expect((fleet.proxy.statistics.connectFailures[dead.host] ?? 0) >= 3)
        // One connection after another: each after the first went to a host asked for ahead (a spare).
        #expect(fleet.proxy.statistics.spareHostsUsed > 0, "\(fleet.proxy.statistics)")
        #expect(await eventually { await fleet.overloadedHosts() == [dead.host] })
        // It listens again: probes find it, successes bring it back.
        try dead.restart()
        let before = dead.connections.count
        let back = await eventually(timeout: .seconds(20)) {
            _ = await onThread { echoThroughProxy(port: fleet.proxyPort, payloads: [randomBytes(10)]) }
            return await fleet.overloadedHosts().isEmpty && dead.connections.count > before
        }
        #expect(back, "the backend never came back")
        await fleet.stop()
    }

    @Test("all backends down, or no agent: the client is closed at once and nothing is left open",
          arguments: PollerKind.allCases)
    func noBackend(poller: PollerKind) async throws {
        let fleet = try await ProxyFleet.start(poller: poller, backends: [.echo, .echo]) {
            $0.connectTimeout = .milliseconds(500)
        }
        await onThread { for b in fleet.backends { b.stop() } }
        let socket = try BlockingSocket(port: fleet.proxyPort, receiveTimeout: 10)
        #expect(await onThread { socket.seesClose() })
        socket.close()
        #expect(await eventually(timeout: .seconds(10)) {
            fleet.proxy.statistics.noBackend == 1 && fleet.proxy.statistics.active == 0
        })
        #expect(fleet.proxy.statistics.reportedFailures >= 2)
        // The agent goes away too: GetHost times out, the client is closed.
        await onThread { fleet.agent.shutdown() }
        let second = try BlockingSocket(port: fleet.proxyPort, receiveTimeout: 10)
        #expect(await onThread { second.seesClose() })
        second.close()
        #expect(await eventually(timeout: .seconds(10)) {
            fleet.proxy.statistics.noBackend == 2 && fleet.proxy.statistics.active == 0
        })
        await fleet.stop()
    }

    @Test("the connection limit: one more client is closed at once, the open ones are served",
          arguments: PollerKind.allCases)
    func connectionLimit(poller: PollerKind) async throws {
        let fleet = try await ProxyFleet.start(poller: poller, backends: [.echo]) { $0.maxConnections = 2 }
        let open = try (0..<2).map { _ in try BlockingSocket(port: fleet.proxyPort, receiveTimeout: 10) }
        for s in open {
            try s.sendAll([1, 2, 3])
            #expect(try await onThread { Result { try s.receive(exactly: 3) } }.get() == [1, 2, 3])
        }
        let third = try BlockingSocket(port: fleet.proxyPort, receiveTimeout: 10)
        #expect(await onThread { third.seesClose() })
        third.close()
        #expect(fleet.proxy.statistics.refused == 1)
        try open[0].sendAll([4])
        let first = open[0]
        #expect(try await onThread { Result { try first.receive(exactly: 1) } }.get() == [4])
        for s in open { s.close() }
        #expect(await eventually(timeout: .seconds(10)) { fleet.proxy.statistics.active == 0 })
        await fleet.stop()
    }

    @Test("a backend that never answers: the idle timeout closes both sides and reports it failed",
          arguments: PollerKind.allCases)
    func idleBackend(poller: PollerKind) async throws {
        let lines = Shared<[CapturedLog]>([])
        let fleet = try await ProxyFleet.start(poller: poller, backends: [.silent],
                                               logger: CapturingLogHandler.logger(into: lines, level: .info)) {
            $0.idleTimeout = .milliseconds(300)
        }
        let sockets = try (0..<3).map { _ in try BlockingSocket(port: fleet.proxyPort, receiveTimeout: 10) }
        for socket in sockets {
            try socket.sendAll(Array("hello".utf8))
        }
        for socket in sockets {
            #expect(await onThread { socket.seesClose() })
            socket.close()
        }
        #expect(await eventually(timeout: .seconds(10)) {
            fleet.proxy.statistics.idleClosed == 3 && fleet.proxy.statistics.active == 0
        })
        #expect(fleet.proxy.statistics.reportedFailures == 3)
        let logged = lines.get().filter { $0.message.contains("idle timeout") }
        #expect(logged.count == 1, "\(logged)")
        await fleet.stop()
    }

    @Test("a client that does not read: the proxy stops reading the backend, its memory stays bounded",
          arguments: proxyCases)
    func slowClient(poller: PollerKind, transfer: TunnelTransfer) async throws {
        let fleet = try await ProxyFleet.start(poller: poller, backends: [.echo]) { $0.transfer = transfer }
        let socket = try BlockingSocket(port: fleet.proxyPort, receiveTimeout: 10)
        // The client sends 32 MiB and reads nothing: the echo comes back until every buffer on the way is full.
        let sent = DispatchSemaphore(value: 0)
        Thread {
            _ = try? socket.sendAll(randomBytes(32 << 20))
            sent.signal()
        }.start()
        let buffered = {
            fleet.proxyGroup.ioLoops.reduce(0) { sum, loop in
                sum + ((try? onLoop(loop) { loop.bufferStatistics.outstandingBytes }) ?? 0)
            }
        }
        // The pipeline fills: the backend is left with bytes it cannot send (the proxy stopped reading it), while
        // the proxy holds at most a buffer per direction in user memory.
        #expect(await eventually(timeout: .seconds(30)) { fleet.backends[0].queuedOutputBytes() > 512 << 10 })
        #expect(buffered() <= 2 * (64 << 10), "\(buffered()) bytes held by the proxy")
        #expect(fleet.proxy.statistics.active == 1)
        // shutdown wakes the sender blocked in send (a close alone would not: its send keeps the socket open).
        shutdown(socket.fd, Int32(SHUT_RDWR))
        await onThread { sent.wait() }
        socket.close()
        #expect(await eventually(timeout: .seconds(10)) { fleet.proxy.statistics.active == 0 })
        await fleet.stop()
    }

    @Test("PROXY protocol v1 and v2 headers reach the backend byte for byte before the client's bytes",
          arguments: PollerKind.allCases)
    func proxyHeaders(poller: PollerKind) async throws {
        for version in ProxyHeaderVersion.allCases {
            let fleet = try await ProxyFleet.start(poller: poller, backends: [.recordFirstBytes]) {
                $0.sendProxy = version
            }
            let socket = try BlockingSocket(port: fleet.proxyPort, receiveTimeout: 10)
            let payload = Array("0123456789abcdefghijklmnopqrstuvwxyz".utf8)
            try socket.sendAll(payload)
            let header: [UInt8]
            let clientPort = socket.localPort
            let p = fleet.proxyPort
            switch version {
            case .v1:
                header = Array("PROXY TCP4 127.0.0.1 127.0.0.1 \(clientPort) \(p)\r\n".utf8)
            case .v2:
                header = [0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A, 0x21, 0x11, 0, 12,
                          127, 0, 0, 1, 127, 0, 0, 1, UInt8(clientPort >> 8), UInt8(clientPort & 0xFF),
                          UInt8(p >> 8), UInt8(p & 0xFF)]
            }
            // The echo carries the header back first, then the client's bytes.
            let count = header.count + payload.count
            let back = try await onThread { Result { try socket.receive(exactly: count) } }.get()
            #expect(Array(back.prefix(header.count)) == header, "\(version)")
            #expect(Array(back.dropFirst(header.count)) == payload)
            socket.close()
            await fleet.stop()
        }
    }

    @Test("affinity by client IP: connections from one source address keep their backend",
          arguments: PollerKind.allCases)
    func clientIPAffinity(poller: PollerKind) async throws {
        let fleet = try await ProxyFleet.start(poller: poller, backends: [.whoami, .whoami, .whoami]) {
            $0.affinity = .clientIP
        }
        var chosen: [String: Set<UInt16>] = [:]
        var calls = 0
        for source in (2...13).map({ "127.0.0.\($0)" }) {
            for _ in 0..<3 {
                let port = try await onThread { Result { try whoami(proxyPort: fleet.proxyPort, from: source) } }.get()
                chosen[source, default: []].insert(port)
                // One call at a time: the backend has room (bounded loads count the calls not yet reported).
                calls += 1
                #expect(await eventually(timeout: .seconds(10)) { fleet.proxy.statistics.reportedSuccesses == calls })
            }
        }
        // The sources do not all land on one backend (3 backends, 12 sources: all on one by chance, 1 in 177,147).
        #expect(Set(chosen.values.flatMap { $0 }).count >= 2)
        for (source, ports) in chosen { #expect(ports.count == 1, "\(source) went to \(ports)") }
        await fleet.stop()
    }

    @Test("shutdown drains: open connections finish within the drain timeout, the rest are closed at its end",
          arguments: PollerKind.allCases)
    func drain(poller: PollerKind) async throws {
        let fleet = try await ProxyFleet.start(poller: poller, backends: [.echo]) {
            $0.drainTimeout = .seconds(1)
        }
        let descriptorsBefore = SystemInfo.openDescriptorCount()
        let lingering = try BlockingSocket(port: fleet.proxyPort, receiveTimeout: 10)
        try lingering.sendAll([7])
        #expect(try await onThread { Result { try lingering.receive(exactly: 1) } }.get() == [7])
        let started = Date()
        await onThread { fleet.proxy.shutdown() }
        let took = Date().timeIntervalSince(started)
        #expect(took >= 0.9, "shutdown returned after \(took) s with a connection open")
        #expect(await onThread { lingering.seesClose() })
        lingering.close()
        #expect(fleet.proxy.statistics.active == 0)
        // Listening stopped: a new connection is refused.
        #expect(throws: (any Error).self) { try BlockingSocket(port: fleet.proxyPort, receiveTimeout: 2) }
        #expect(await eventually(timeout: .seconds(10)) { SystemInfo.openDescriptorCount() <= descriptorsBefore - 1 })
        await fleet.stop()
    }

    @Test("the counters are swift-metrics counters and gauges named by the proxy", arguments: [PollerKind.epoll])
    func metrics(poller: PollerKind) async throws {
        let metrics = TestMetrics()
        let dead = LoadBalancing.Host(address: "127.0.0.1", port: try freePort())!
        let fleet = try await ProxyFleet.start(poller: poller, backends: [.echo], otherHosts: [dead],
                                               metrics: metrics)
        let payloads = (0..<6).map { _ in randomBytes(1000) }
        let failures = await onThread { echoThroughProxy(port: fleet.proxyPort, payloads: payloads) }
        #expect(failures.isEmpty, "\(failures)")
        #expect(await eventually(timeout: .seconds(10)) { fleet.proxy.statistics.reportedSuccesses == 6 })
        let s = fleet.proxy.statistics
        #expect((s.connectFailures[dead] ?? 0) >= 1)
        let proxy = [("proxy", "switchyard-tests")]
        let expected: [(String, [(String, String)], Int64)] = [
            ("switchyard_proxy_accepted_total", proxy, 6),
            ("switchyard_proxy_reported_successes_total", proxy, 6),
            ("switchyard_proxy_reported_failures_total", proxy, Int64(s.reportedFailures)),
            ("switchyard_proxy_client_to_backend_bytes_total", proxy, 6000),
            ("switchyard_proxy_backend_to_client_bytes_total", proxy, 6000),
            ("switchyard_proxy_connect_failures_total", proxy + [("backend", "\(dead)")],
             Int64(s.connectFailures[dead] ?? 0)),
        ]
        for (label, dimensions, value) in expected {
            #expect(try metrics.expectCounter(label, dimensions).totalValue == value, "\(label)")
        }
        #expect(try metrics.expectMeter("switchyard_proxy_active_connections", proxy).lastValue == 0)
        await fleet.stop()
    }
}

/// Connects from `source` (a loopback address) and reads the 2-byte port a whoami backend sends.
func whoami(proxyPort: UInt16, from source: String) throws -> UInt16 {
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    defer { close(fd) }
    var local = sockaddr_in()
    local.sin_family = sa_family_t(AF_INET)
    inet_pton(AF_INET, source, &local.sin_addr)
    var remote = sockaddr_in()
    remote.sin_family = sa_family_t(AF_INET)
    remote.sin_port = proxyPort.bigEndian
    inet_pton(AF_INET, "127.0.0.1", &remote.sin_addr)
    let size = socklen_t(MemoryLayout<sockaddr_in>.size)
    let bound = withUnsafePointer(to: &local) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, size) }
    }
    let connected = withUnsafePointer(to: &remote) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, size) }
    }
    guard bound == 0, connected == 0 else { throw TestFailure("cannot connect from \(source): errno \(errno)") }
    var timeout = timeval(tv_sec: 10, tv_usec: 0)
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
    var bytes: [UInt8] = [0, 0]
    var got = 0
    while got < 2 {
        let n = bytes.withUnsafeMutableBytes { recv(fd, $0.baseAddress! + got, 2 - got, 0) }
        guard n > 0 else { throw TestFailure("no answer from the backend through the proxy") }
        got += n
    }
    return UInt16(bytes[0]) << 8 | UInt16(bytes[1])
}
