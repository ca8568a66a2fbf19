import Glibc
import LarsProtocol
import LoadBalanceAgent
import LoadBalanceClient
import LoadBalancing
import Messaging
import Reactor
import TestSupport
import Testing

/// A TCP port that accepts connections (the kernel completes the handshake from the backlog) and never reads or
/// answers: a hung server. Closed with `close()`.
final class SilentListener {
    let fd: Int32
    let port: Int

    init() throws {
        let socketFD = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = UInt32(0x7F00_0001).bigEndian
        let bound = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                bind(socketFD, $0, socklen_t(MemoryLayout<sockaddr_in>.size))
            }
        }
        guard bound == 0, listen(socketFD, 16) == 0 else {
            _ = Glibc.close(socketFD)
            throw TestFailure("silent listener: bind/listen failed")
        }
        var local = sockaddr_in()
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        _ = withUnsafeMutablePointer(to: &local) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(socketFD, $0, &length) }
        }
        fd = socketFD
        port = Int(UInt16(bigEndian: local.sin_port))
    }

    func close() { _ = Glibc.close(fd) }
}

@Suite("Load-balance agent: failover between name services", .serialized)
struct FailoverTests {
    @Test("the first name service stops: the agent moves to the next, GetHost never fails, pushes come from it",
          arguments: PollerKind.allCases)
    func failsOverOnLoss(poller: PollerKind) async throws {
        let world = try AgentWorld.make(poller: poller, routes: [route12: [h1]])
        let second = try FakeNameService(group: world.group, routes: [route12: [h1]])
        defer {
            second.stop()
            world.shutdown()
        }
        // The world's agent has one name service: a second agent with both, the world's first.
        var configuration = world.agent.configuration
        configuration.ports = [0, 0, 0]
        configuration.nameServiceAlternates = [ClientEndpoint(host: "127.0.0.1", port: Int(second.port))]
        let agent = LoadBalanceAgent(group: world.group, configuration: configuration, logger: testLogger)
        let ports = try agent.start().map { Int($0.port) }
        defer { agent.shutdown() }
        let client = try LoadBalanceClient(agentPorts: ports, timeout: .seconds(2), loop: world.group.ioLoops[1])
        defer { client.close() }
        _ = try await client.getHost(modid: 1, cmdid: 2)
        #expect(try await eventually { try await client.getHost(modid: 1, cmdid: 2).isSuccess })
        #expect(second.connectionCount == 0, "the alternate is not used while the first answers")

        world.names.stop()
        var failures = 0
        for _ in 0..<50 {
            if try await client.getHost(modid: 1, cmdid: 2).host != h1 { failures += 1 }
            try await Task.sleep(for: .milliseconds(5))
        }
        #expect(failures == 0)
        #expect(await eventually { second.connectionCount == 1 })
        second.push(route12, [h2, h3])
        #expect(try await eventually { Set(try await client.getRoute(modid: 1, cmdid: 2)) == [h2, h3] })
    }

    @Test("a name service that accepts and answers nothing is left after the silence timeout for the next",
          arguments: PollerKind.allCases)
    func failsOverOnSilence(poller: PollerKind) async throws {
        let silent = try SilentListener()
        defer { silent.close() }
        let world = try AgentWorld.make(poller: poller, routes: [route12: [h3]]) {
            $0.nameServicePort = silent.port
            $0.upstreamHeartbeatInterval = .milliseconds(100)
            $0.upstreamSilenceTimeout = .milliseconds(400)
        }
        defer { world.shutdown() }
        // The world's agent talks to the silent one; this one has the world's name service as its alternate.
        var configuration = world.agent.configuration
        configuration.ports = [0, 0, 0]
        configuration.nameServiceAlternates = [ClientEndpoint(host: "127.0.0.1", port: Int(world.names.port))]
        let agent = LoadBalanceAgent(group: world.group, configuration: configuration, logger: testLogger)
        let ports = try agent.start().map { Int($0.port) }
        defer { agent.shutdown() }
        let client = try LoadBalanceClient(agentPorts: ports, timeout: .seconds(2), loop: world.group.ioLoops[1])
        defer { client.close() }
        let start = ContinuousClock.now
        _ = try await client.getHost(modid: 1, cmdid: 2)
        #expect(try await eventually(timeout: .seconds(10)) {
            try await client.getHost(modid: 1, cmdid: 2).host == h3
        })
        #expect(ContinuousClock.now - start >= .milliseconds(300), "only after the silence timeout")
    }

    @Test("names and reporter take comma-separated lists (Lars key and flag); a bad entry is refused")
    func configurationLists() throws {
        var configuration = AgentConfiguration()
        try configuration.apply(configurationText: "names = 10.0.0.1:7778, 10.0.0.2:7778\nreporter = r:7779")
        #expect(configuration.nameServiceHost == "10.0.0.1" && configuration.nameServicePort == 7778)
        #expect(configuration.nameServiceAlternates == [ClientEndpoint(host: "10.0.0.2", port: 7778)])
        #expect(configuration.nameServiceEndpoints.map(\.description) == ["10.0.0.1:7778", "10.0.0.2:7778"])
        #expect(configuration.reporterEndpoints == [ClientEndpoint(host: "r", port: 7779)])
        for bad in ["names = a:7778,", "names = a:7778,b", "names = :7778", "reporter = a:70000"] {
            #expect(throws: AgentConfigurationError.self) { try configuration.apply(configurationText: bad) }
        }
        try configuration.apply(configurationText: "upstream_silence_ms = 0")
        #expect(configuration.upstreamSilenceTimeout == nil)
    }
}
