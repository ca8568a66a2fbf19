import Foundation
import LarsProtocol
import LoadBalanceAgent
import LoadBalanceClient
import LoadBalancing
import Messaging
import Reactor
import SwiftProtobuf
import TestSupport
import Testing

#if canImport(Glibc)
import Glibc
#endif

extension AgentTests {
    /// Floods and forgeries against the agent (issue 15): each test fails on an agent without the bound it checks.
    /// Nested in the serialized agent suite: the floods do not run beside the other agent tests.
    @Suite("Agent hardening over real sockets")
    struct AgentHardeningTests {
        static func getHostBody(modid: Int32, cmdid: Int32, seq: UInt32 = 1) -> [UInt8] {
            var request = Lars_GetHostRequest()
            request.seq = seq
            request.modid = modid
            request.cmdid = cmdid
            return try! request.serializedBytes()
        }

        /// The agent port a request for (modid, cmdid) goes to.
        static func port(_ ports: [Int], _ modid: Int32, _ cmdid: Int32) -> Int {
            ports[Int((Int64(modid) + Int64(cmdid)) % Int64(ports.count))]
        }

        @Test("route cache under a flood of random modules: few writes, only routes with hosts, shutdown within bound",
              arguments: PollerKind.allCases)
        func routeCacheFlood(poller: PollerKind) async throws {
            let file = FileManager.default.temporaryDirectory.appendingPathComponent("lb-flood-\(UUID()).json").path
            defer { try? FileManager.default.removeItem(atPath: file) }
            let started = ContinuousClock.now
            let world = try AgentWorld.make(poller: poller, routes: [route12: [h1, h2]]) {
                $0.routeCacheFile = file
                $0.routeCacheInterval = .milliseconds(200)
                $0.maxModules = 1000
                $0.unknownModuleRate = 1e9  // the cache is under test here, not the rate limit
                $0.unknownModuleBurst = 1_000_000
            }
            defer { world.shutdown() }
            #expect(try await eventually { try await world.client.getHost(modid: 1, cmdid: 2).isSuccess })
            let flood = RawDatagramSocket(receiveTimeoutMs: 50)
            for i in 0..<10_000 {
                let modid = Int32.random(in: 1000...1_000_000_000)
                flood.sendFrame(id: MessageID.getHostRequest.rawValue, body: Self.getHostBody(modid: modid, cmdid: 1),
                                port: Self.port(world.ports, modid, 1))
                if i % 500 == 499 { try await Task.sleep(for: .milliseconds(2)) }  // let the socket buffer drain
            }
            // The real caller is answered after the flood (a datagram of its may be lost in the flood: asked again);
            // the table stays within its bound.
            #expect(await eventually { (try? await world.client.getHost(modid: 1, cmdid: 2).isSuccess) == true })
            let statistics = try #require(await world.agent.statistics())
            #expect(statistics.modules <= 1000)
            #expect(statistics.getHostRequests > 1000, "the flood reached the agent")
            #expect(statistics.modulesEvicted > 0)
            // Written once per interval at most, and only the route with hosts.
            #expect(await eventually { world.agent.routeCacheWrites >= 1 })
            let elapsed = ContinuousClock.now - started
            let intervals = Int(elapsed / .milliseconds(200)) + 2
            #expect(world.agent.routeCacheWrites <= intervals, "\(world.agent.routeCacheWrites) writes in \(elapsed)")
            #expect(try RouteCacheFile(path: file).load() == [route12: [h1, h2]])
            let size = try FileManager.default.attributesOfItem(atPath: file)[.size] as? Int ?? 0
            #expect(size < 1000, "\(size) bytes")
            let stopping = ContinuousClock.now
            await world.agent.shutdown()
            #expect(ContinuousClock.now - stopping < .seconds(3))
        }

        @Test("shutdown waits at most routeCacheShutdownTimeout for a route cache write that hangs")
        func shutdownBoundedByTheCacheWrite() async throws {
            let directory = FileManager.default.temporaryDirectory.appendingPathComponent("lb-fifo-\(UUID())").path
            try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
            defer { try? FileManager.default.removeItem(atPath: directory) }
            let file = directory + "/routes.json"
            // The writer writes to FILE.tmp first: a FIFO nobody reads blocks that open until a reader comes.
            #expect(mkfifo(file + ".tmp", 0o600) == 0)
            let world = try AgentWorld.make(poller: .epoll, routes: [route12: [h1]]) {
                $0.routeCacheFile = file
                $0.routeCacheInterval = .milliseconds(100)
                $0.routeCacheShutdownTimeout = .milliseconds(500)
            }
            #expect(try await eventually { try await world.client.getHost(modid: 1, cmdid: 2).isSuccess })
            world.names.push(route12, [h1, h2])  // a second change while the first write hangs: coalesced
            #expect(try await eventually { try await world.client.getRoute(modid: 1, cmdid: 2).count == 2 })
            // Without the bound shutdown would wait for the hung write until a reader came (never): it returns, having
            // waited for the write about the timeout (the rest of its work takes a loaded machine a while too).
            let stopping = ContinuousClock.now
            let agent = world.agent
            try await withTimeout(15, "shutdown with a hung route cache write") { await agent.shutdown() }
            let took = ContinuousClock.now - stopping
            #expect(took >= .milliseconds(400), "\(took)")
            #expect(world.agent.routeCacheWrites == 0)
            world.shutdown()
            // Release the hung writer: read the FIFO to its end.
            let reader = open(file + ".tmp", O_RDONLY)
            var buffer = [UInt8](repeating: 0, count: 4096)
            while read(reader, &buffer, buffer.count) > 0 {}
            close(reader)
        }

        @Test("a flood of unknown modules from one source is rate limited; real callers keep their answers",
              arguments: PollerKind.allCases)
        func unknownModuleFlood(poller: PollerKind) async throws {
            let other = RouteKey(modid: 3, cmdid: 4)
            let started = ContinuousClock.now
            let world = try AgentWorld.make(poller: poller, routes: [route12: [h1, h2], other: [h3]]) {
                $0.unknownModuleRate = 50
                $0.unknownModuleBurst = 100
            }
            defer { world.shutdown() }
            #expect(try await eventually { try await world.client.getHost(modid: 1, cmdid: 2).isSuccess })
            let flood = RawDatagramSocket(receiveTimeoutMs: 50, bindAddress: "127.0.0.2")
            for i in 0..<5000 {
                let modid = Int32(10_000 + i)
                flood.sendFrame(id: MessageID.getHostRequest.rawValue, body: Self.getHostBody(modid: modid, cmdid: 1),
                                port: Self.port(world.ports, modid, 1))
                if i % 100 == 99 {
                    // The real caller, from 127.0.0.1, during the flood: answered with a host every time.
                    let answer = try await world.client.getHost(modid: 1, cmdid: 2)
                    #expect(answer.isSuccess)
                }
            }
            // A new module of the real caller is not throttled by the flooder's bucket.
            #expect(try await eventually { try await world.client.getHost(modid: 3, cmdid: 4).host == h3 })
            let statistics = try #require(await world.agent.statistics())
            #expect(statistics.unknownModulesThrottled > 1000, "\(statistics)")
            let seconds = (ContinuousClock.now - started) / .seconds(1)
            let allowed = Int(100 + 50 * seconds) + 5
            // Modules the flood made the agent ask for (a module without hosts is asked again on the agent's
            // retry interval: the requests, unlike the modules, grow with the run's length).
            let asked = world.names.requestedKeys.withLock { $0.count }
            #expect(asked <= allowed, "\(asked) routes asked for")
            #expect(statistics.modules <= allowed)
        }

        @Test("only allowed sources are answered: others are dropped and counted", arguments: PollerKind.allCases)
        func onlyAllowedSources(poller: PollerKind) async throws {
            let world = try AgentWorld.make(poller: poller, routes: [route12: [h1]]) {
                $0.allowedSources = .network(ip: 0x7F00_0002, prefixLength: 32)  // 127.0.0.2 only
            }
            defer { world.shutdown() }
            let allowed = RawDatagramSocket(receiveTimeoutMs: 5000, bindAddress: "127.0.0.2")
            let refused = RawDatagramSocket(receiveTimeoutMs: 0, bindAddress: "127.0.0.1")
            let port = Self.port(world.ports, 1, 2)
            let request = Self.getHostBody(modid: 1, cmdid: 2)
            allowed.sendFrame(id: MessageID.getHostRequest.rawValue, body: request, port: port)
            #expect(allowed.receiveFrame()?.id == MessageID.getHostResponse.rawValue)
            for _ in 0..<5 {
                refused.sendFrame(id: MessageID.getHostRequest.rawValue, body: request, port: port)
            }
            // Sent after them to the same port: its answer means the five were handled before it.
            allowed.sendFrame(id: MessageID.getHostRequest.rawValue, body: request, port: port)
            #expect(allowed.receiveFrame()?.id == MessageID.getHostResponse.rawValue)
            let statistics = try #require(await world.agent.statistics())
            #expect(statistics.remoteDatagramsDropped == 5)
            var byte: UInt8 = 0
            #expect(recv(refused.fd, &byte, 1, Int32(MSG_DONTWAIT)) < 0, "nothing was sent to the refused source")
        }

        @Test("with a report secret, forged failure reports do not overload a host; reports with it do",
              arguments: PollerKind.allCases)
        func reportSecret(poller: PollerKind) async throws {
            let world = try AgentWorld.make(poller: poller, routes: [route12: [h1, h2]]) { $0.reportSecret = "s3cret" }
            defer { world.shutdown() }
            #expect(try await eventually { try await world.client.getHost(modid: 1, cmdid: 2).isSuccess })
            let socket = RawDatagramSocket(receiveTimeoutMs: 5000)
            let port = Self.port(world.ports, 1, 2)
            var report = Lars_ReportRequest()
            report.modid = 1
            report.cmdid = 2
            report.host = Lars_HostInfo(h1)
            report.retcode = 1
            let forged: [UInt8] = try report.serializedBytes()
            func sync() {
                socket.sendFrame(id: MessageID.getHostRequest.rawValue, body: Self.getHostBody(modid: 1, cmdid: 2),
                                 port: port)
                _ = socket.receiveFrame()
            }
            for _ in 0..<50 { socket.sendFrame(id: MessageID.reportRequest.rawValue, body: forged, port: port) }
            sync()
            let wrong = ReportSecret.appending(Array("guess".utf8), to: forged)
            for _ in 0..<50 { socket.sendFrame(id: MessageID.reportRequest.rawValue, body: wrong, port: port) }
            sync()
            #expect(await world.agent.balancerSnapshot(modid: 1, cmdid: 2)?.state(of: h1)?.health == .idle)
            #expect(await world.agent.statistics()?.reportsRejected == 100)
            // Lars's parser sees a plain ReportRequest: the secret is an unknown field it skips.
            let signed = ReportSecret.appending(Array("s3cret".utf8), to: forged)
            #expect(try Lars_ReportRequest(serializedBytes: signed).retcode == 1)
            for _ in 0..<50 { socket.sendFrame(id: MessageID.reportRequest.rawValue, body: signed, port: port) }
            sync()
            #expect(await world.agent.balancerSnapshot(modid: 1, cmdid: 2)?.state(of: h1)?.health == .overloaded)
            #expect(await world.agent.statistics()?.reportsRejected == 100)
            // The client APIs send the secret when given it: their failure reports count too.
            let ports = world.ports
            let client = try LoadBalanceClient(agentPorts: ports, reportSecret: Array("s3cret".utf8))
            defer { client.close() }
            let blocking = try BlockingLoadBalanceClient(agentPorts: ports, reportSecret: Array("s3cret".utf8))
            for i in 0..<50 {
                if i % 2 == 0 {
                    client.report(modid: 1, cmdid: 2, host: h2, success: false)
                } else {
                    blocking.report(modid: 1, cmdid: 2, host: h2, success: false)
                }
            }
            #expect(await eventually {
                await world.agent.balancerSnapshot(modid: 1, cmdid: 2)?.state(of: h2)?.health == .overloaded
            })
            #expect(await world.agent.statistics()?.reportsRejected == 100)
        }

        @Test("API GetRoute of a route with 8,000 hosts: answered with as many as fit in a datagram, counted",
              arguments: PollerKind.allCases)
        func hugeRouteIsCut(poller: PollerKind) async throws {
            let key = RouteKey(modid: 5, cmdid: 5)
            let hosts = (0..<8000).map { LoadBalancing.Host(ip: 0x0A00_0000 + UInt32($0), port: 9000) }
            let world = try AgentWorld.make(poller: poller, routes: [key: hosts])
            defer { world.shutdown() }
            #expect(try await eventually { try await world.client.getHost(modid: 5, cmdid: 5).isSuccess })
            let served = try await world.client.getRoute(modid: 5, cmdid: 5)
            #expect(served.count > 4000 && served.count < 8000, "\(served.count) hosts")
            #expect(Set(served).isSubset(of: Set(hosts)))
            _ = try await world.client.getRoute(modid: 5, cmdid: 5)
            #expect(await world.agent.statistics()?.routeRepliesTruncated == 2)
        }
    }
}
