import LoadBalanceAgent
import LoadBalancing
import Messaging
import Reactor
import TestSupport
import Testing

/// Frames written out byte by byte from PROTOCOL.md (header: id and body length, Int32 little-endian; protobuf
/// bodies by hand), not produced by our encoder.
@Suite("Agent wire compatibility", .serialized)
struct WireCompatibilityTests {
    // HostInfo{ip = 10.0.0.1 = 0x0A000001 = 167772161, port = 9000}: 08 <varint 167772161> 10 <varint 9000>.
    static let hostInfo: [UInt8] = [0x08, 0x81, 0x80, 0x80, 0x50, 0x10, 0xA8, 0x46]

    @Test("GetHostRequest, API GetRouteRequest and ReportRequest from hand-built bytes",
          arguments: PollerKind.allCases)
    func handBuiltFrames(poller: PollerKind) async throws {
        // An idle window longer than the test however loaded the machine is: a report after the window's end would
        // start a new one and clear the error it counts.
        let world = try AgentWorld.make(poller: poller, routes: [route12: [h1]]) {
            $0.balancer.idleTimeout = .seconds(3600)
        }
        defer { world.shutdown() }
        let socket = RawDatagramSocket()
        // (1 + 2) % 3 = 0: the first port.
        let port = world.ports[0]

        // GetHostRequest{seq=7, modid=1, cmdid=2} for a module the agent has never seen: NOEXIST.
        let getHost: [UInt8] = [0x04, 0, 0, 0, 0x06, 0, 0, 0, 0x08, 0x07, 0x10, 0x01, 0x18, 0x02]
        socket.send(getHost, port: port)
        // GetHostResponse{seq=7, modid=1, cmdid=2, retcode=3}
        #expect(socket.receive() == [0x05, 0, 0, 0, 0x08, 0, 0, 0, 0x08, 0x07, 0x10, 0x01, 0x18, 0x02, 0x20, 0x03])

        #expect(try await eventually { try await world.client.getHost(modid: 1, cmdid: 2).isSuccess })
        socket.send(getHost, port: port)
        // GetHostResponse{seq=7, modid=1, cmdid=2, host=HostInfo{10.0.0.1, 9000}} (retcode 0 is not written).
        #expect(socket.receive() == [0x05, 0, 0, 0, 0x10, 0, 0, 0, 0x08, 0x07, 0x10, 0x01, 0x18, 0x02, 0x2A, 0x08]
                + Self.hostInfo)

        // API GetRouteRequest{modid=1, cmdid=2} -> GetRouteResponse{modid=1, cmdid=2, host=[10.0.0.1:9000]}.
        socket.send([0x07, 0, 0, 0, 0x04, 0, 0, 0, 0x08, 0x01, 0x10, 0x02], port: port)
        #expect(socket.receive() == [0x08, 0, 0, 0, 0x0E, 0, 0, 0, 0x08, 0x01, 0x10, 0x02, 0x1A, 0x08] + Self.hostInfo)

        // ReportRequest{modid=1, cmdid=2, host=10.0.0.1:9000, retcode=1}: no reply, one error counted.
        socket.send([0x06, 0, 0, 0, 0x10, 0, 0, 0, 0x08, 0x01, 0x10, 0x02, 0x1A, 0x08] + Self.hostInfo + [0x20, 0x01],
                    port: port)
        #expect(await eventually {
            await world.agent.balancerSnapshot(modid: 1, cmdid: 2)?.state(of: h1)?.consecutiveErrors == 1
        })

        // A datagram whose size is not 8 + length is dropped; the agent goes on.
        socket.send([0x04, 0, 0, 0, 0x09, 0, 0, 0, 0x08, 0x07], port: port)
        socket.send(getHost, port: world.ports[2])
        #expect(socket.receive()?.prefix(4) == [0x05, 0, 0, 0])
    }
}
