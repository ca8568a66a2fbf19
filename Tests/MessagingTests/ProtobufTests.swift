import Dispatch
import Foundation
import LarsProtocol
import Messaging
import Reactor
import Synchronization
import Testing
import TestSupport

extension MessagingSocketTests {
    @Suite("Protobuf bodies", .serialized)
    struct ProtobufTests {
        /// The name service's answer for (modid, cmdid): three hosts on 127.0.0.1.
        static func routeResponse(for request: Lars_GetRouteRequest) -> Lars_GetRouteResponse {
            var response = Lars_GetRouteResponse()
            response.modid = request.modid
            response.cmdid = request.cmdid
            response.host = (0..<3).map { i in
                var host = Lars_HostInfo()
                host.ip = 0x7F00_0001  // 127.0.0.1 in reading order (PROTOCOL.md)
                host.port = 8000 + request.modid * 10 + Int32(i)
                return host
            }
            return response
        }

        static func routeRouter() throws -> MessageRouter<TCPConnection> {
            let router = MessageRouter<TCPConnection>()
            try router.on(MessageID.getRouteRequest, as: Lars_GetRouteRequest.self) { request, message in
                message.connection.send(routeResponse(for: request), id: MessageID.getRouteResponse)
            }
            return router
        }

        @Test("typed TCP round trip: GetRouteRequest -> GetRouteResponse with hosts, typed on both sides",
              arguments: PollerKind.allCases)
        func tcpRoundTrip(poller: PollerKind) throws {
            let responses = Shared<[Lars_GetRouteResponse]>([])
            let arrived = EventCounter()
            let connected = EventCounter()
            try withGroup(poller: poller) { group in
                try withFramedServer(group: group, router: try Self.routeRouter()) { server, port in
                    let clientRouter = MessageRouter<TCPConnection>()
                    try clientRouter.on(MessageID.getRouteResponse, as: Lars_GetRouteResponse.self) { response, _ in
                        responses.update { $0.append(response) }
                        arrived.signal()
                    }
                    let client = try FramedClient(
                        loop: group.ioLoops[1],
                        configuration: FramedClientConfiguration(
                            client: ClientConfiguration(port: Int(port), reconnect: false)),
                        router: clientRouter, onConnect: { _ in connected.signal() })
                    defer { client.disconnect() }
                    client.connect()
                    #expect(connected.wait(for: 1))
                    var requests: [Lars_GetRouteRequest] = []
                    for modid in Int32(1)...5 {
                        var request = Lars_GetRouteRequest()
                        request.modid = modid
                        request.cmdid = modid * 100
                        requests.append(request)
                        // From the test thread (not the loop): typed send hops to the loop.
                        #expect(client.send(request, id: MessageID.getRouteRequest))
                    }
                    #expect(arrived.wait(for: requests.count))
                    #expect(responses.get() == requests.map(Self.routeResponse(for:)))
                    #expect(responses.get().first?.host.first?.ip == 2_130_706_433)
                    #expect(server.statistics.frames == requests.count)
                    #expect(server.statistics.protocolErrors == 0)
                }
            }
        }

        @Test("the typed body on the wire is the plain protobuf encoding (a raw peer can read it)",
              arguments: PollerKind.allCases)
        func tcpWireFormat(poller: PollerKind) throws {
            try withGroup(poller: poller) { group in
                try withFramedServer(group: group, router: try Self.routeRouter()) { _, port in
                    let client = try BlockingSocket.frameClient(port: port)
                    defer { client.close() }
                    var request = Lars_GetRouteRequest()
                    request.modid = 3
                    request.cmdid = 4
                    // Field 1 varint 3, field 2 varint 4.
                    try client.sendFrame(id: MessageID.getRouteRequest.rawValue, body: [0x08, 0x03, 0x10, 0x04])
                    let frame = try client.receiveFrame()
                    #expect(frame.id == MessageID.getRouteResponse.rawValue)
                    let expected: [UInt8] = try Self.routeResponse(for: request).serializedBytes()
                    #expect(frame.body == expected)
                }
            }
        }

        @Test("a garbage body on a typed TCP route closes only that connection", arguments: PollerKind.allCases)
        func garbageBodyClosesOnlyThatConnection(poller: PollerKind) throws {
            let closes = EventCounter()
            try withGroup(poller: poller) { group in
                try withFramedServer(group: group, router: try Self.routeRouter(),
                                     onClose: { _ in closes.signal() }) { server, port in
                    let good = try BlockingSocket.frameClient(port: port)
                    defer { good.close() }
                    let bad = try BlockingSocket.frameClient(port: port, receiveTimeout: 5)
                    defer { bad.close() }
                    var request = Lars_GetRouteRequest()
                    request.modid = 1
                    try bad.sendFrame(id: MessageID.getRouteRequest.rawValue, body: try request.serializedBytes())
                    #expect(try bad.receiveFrame().id == MessageID.getRouteResponse.rawValue)
                    // A truncated varint tag: not a GetRouteRequest.
                    try bad.sendFrame(id: MessageID.getRouteRequest.rawValue, body: [0xFF, 0xFF, 0xFF])
                    #expect(bad.seesClose())
                    #expect(closes.wait(for: 1))
                    #expect(server.statistics.protocolErrors == 1)
                    request.modid = 2
                    try good.sendFrame(id: MessageID.getRouteRequest.rawValue, body: try request.serializedBytes())
                    let frame = try good.receiveFrame()
                    #expect(try Lars_GetRouteResponse(serializedBytes: frame.body) == Self.routeResponse(for: request))
                    #expect(server.connectionCount == 1)
                    #expect(closes.count == 1)
                }
            }
        }

        @Test("typed UDP round trip: GetHostRequest -> GetHostResponse between two framed endpoints",
              arguments: PollerKind.allCases)
        func udpRoundTrip(poller: PollerKind) throws {
            let responses = Shared<[Lars_GetHostResponse]>([])
            let arrived = EventCounter()
            try withGroup(poller: poller) { group in
                let serverRouter = MessageRouter<UDPPeer>()
                try serverRouter.on(MessageID.getHostRequest, as: Lars_GetHostRequest.self) { request, message in
                    var response = Lars_GetHostResponse()
                    response.seq = request.seq
                    response.modid = request.modid
                    response.cmdid = request.cmdid
                    response.retcode = LarsReturnCode.success
                    var host = Lars_HostInfo()
                    host.ip = 0x7F00_0001
                    host.port = Int32(request.seq) + 10_000
                    response.host = host
                    message.connection.send(response, id: MessageID.getHostResponse)
                }
                let server = try FramedUDPEndpoint(loop: group.ioLoops[0], ports: [0], router: serverRouter)
                defer { server.close() }
                let clientRouter = MessageRouter<UDPPeer>()
                try clientRouter.on(MessageID.getHostResponse, as: Lars_GetHostResponse.self) { response, message in
                    responses.update { $0.append(response) }
                    arrived.signal()
                }
                let client = try FramedUDPEndpoint(loop: group.ioLoops[1], ports: [0], router: clientRouter)
                defer { client.close() }
                for seq in UInt32(1)...20 {
                    var request = Lars_GetHostRequest()
                    request.seq = seq
                    request.modid = 5
                    request.cmdid = 6
                    client.send(request, id: MessageID.getHostRequest, to: server.localAddresses[0])
                }
                #expect(arrived.wait(for: 20))
                let got = responses.get().sorted { $0.seq < $1.seq }
                #expect(got.map(\.seq) == Array(UInt32(1)...20))
                #expect(got.allSatisfy { $0.modid == 5 && $0.cmdid == 6 && $0.retcode == 0 && $0.hasHost })
                #expect(got.allSatisfy { $0.host.ip == 2_130_706_433 && $0.host.port == Int32($0.seq) + 10_000 })
                #expect(server.statistics.frames == 20)
                #expect(server.statistics.dropped == 0)
                // A garbage body on a typed UDP route is rejected and counted; the endpoint goes on.
                client.sendFrame(messageID: MessageID.getHostRequest.rawValue, body: [0xFF, 0xFF, 0xFF],
                                 to: server.localAddresses[0])
                var request = Lars_GetHostRequest()
                request.seq = 99
                client.send(request, id: MessageID.getHostRequest, to: server.localAddresses[0])
                #expect(arrived.wait(for: 21))
                #expect(responses.get().last?.seq == 99)
                #expect(server.statistics.badBodies == 1)
            }
        }
    }
}
