import Dispatch
import Foundation
import LarsProtocol
import LarsWire
import Messaging
import Reactor
import Synchronization
import Testing
import TestSupport

extension MessagingSocketTests {
    @Suite("Framed UDP", .serialized)
    struct FramedUDPTests {
        /// An agent-like router: GetHostRequest -> GetHostResponse with the request's seq, and the index of the
        /// port it arrived on (by the channel's local port) in `cmdid`.
        static func agentRouter(ports: Shared<[UInt16]>) throws -> MessageRouter<UDPPeer> {
            let router = MessageRouter<UDPPeer>()
            try router.on(MessageID.getHostRequest, as: Lars_GetHostRequest.self) { request, message in
                var response = Lars_GetHostResponse()
                response.seq = request.seq
                response.modid = request.modid
                response.cmdid = Int32(ports.get().firstIndex(of: message.connection.channel.localAddress.port) ?? -1)
                var host = Lars_HostInfo()
                host.ip = Int32(bitPattern: message.connection.address.ip)
                host.port = Int32(message.connection.address.port)  // who the endpoint thinks asked
                response.host = host
                message.connection.send(response, id: MessageID.getHostResponse)
            }
            return router
        }

        static func request(seq: UInt32, modid: Int32 = 1) throws -> [UInt8] {
            var request = Lars_GetHostRequest()
            request.seq = seq
            request.modid = modid
            request.cmdid = 2
            let body: [UInt8] = try request.serializedBytes()
            return FrameParser.encode(messageID: MessageID.getHostRequest.rawValue, body: body)
        }

        static func response(_ frame: TestFrame) throws -> Lars_GetHostResponse {
            #expect(frame.id == MessageID.getHostResponse.rawValue)
            return try Lars_GetHostResponse(serializedBytes: frame.body)
        }

        @Test("request/response on three ports of one loop; each reply comes from the port asked",
              arguments: PollerKind.allCases)
        func threePorts(poller: PollerKind) throws {
            try withGroup(poller: poller, ioLoops: 1) { group in
                let ports = Shared<[UInt16]>([])
                let endpoint = try FramedUDPEndpoint(loop: group.ioLoops[0], ports: [0, 0, 0],
                                                     router: try Self.agentRouter(ports: ports))
                defer { endpoint.close() }
                ports.set(endpoint.localAddresses.map(\.port))
                #expect(Set(ports.get()).count == 3)
                #expect(endpoint.channels.allSatisfy { $0.loop === group.ioLoops[0] })
                let client = try DatagramSocket()
                defer { client.close() }
                for (index, port) in ports.get().enumerated() {
                    for seq in UInt32(0)..<5 {
                        try client.send(try Self.request(seq: seq), port: port)
                        let (frame, from) = try client.receiveFrame()
                        let response = try Self.response(frame)
                        #expect(from == port)
                        #expect(response.seq == seq)
                        #expect(response.cmdid == Int32(index))
                        #expect(response.host.port == Int32(client.localPort))
                        #expect(UInt32(bitPattern: response.host.ip) == 0x7F00_0001)
                    }
                }
                #expect(endpoint.statistics.frames == 15)
                #expect(endpoint.statistics.dropped == 0)
                // The endpoint fixed its routes when it started.
                #expect(throws: RouterError.routerFrozen) {
                    try endpoint.router.on(MessageID.reportRequest) { _ in }
                }
            }
        }

        @Test("a port that another endpoint holds cannot be bound a second time", arguments: PollerKind.allCases)
        func portInUse(poller: PollerKind) throws {
            try withGroup(poller: poller, ioLoops: 1) { group in
                let ports = Shared<[UInt16]>([])
                let first = try FramedUDPEndpoint(loop: group.ioLoops[0], ports: [0],
                                                  router: try Self.agentRouter(ports: ports))
                defer { first.close() }
                let port = first.localAddresses[0].port
                ports.set([port])
                // A second agent on the same port would silently take the first one's datagrams.
                #expect(throws: (any Error).self) {
                    let second = try FramedUDPEndpoint(loop: group.ioLoops[0], ports: [0, Int(port)],
                                                       router: MessageRouter<UDPPeer>())
                    second.close()
                }
                // The first endpoint still answers, and the second's half-opened socket was closed.
                let client = try DatagramSocket()
                defer { client.close() }
                try client.send(try Self.request(seq: 7), port: port)
                #expect(try Self.response(try client.receiveFrame().frame).seq == 7)
            }
        }

        @Test("malformed datagrams are dropped and counted; the endpoint keeps answering",
              arguments: PollerKind.allCases)
        func malformedDatagrams(poller: PollerKind) throws {
            try withGroup(poller: poller, ioLoops: 1) { group in
                let ports = Shared<[UInt16]>([])
                let endpoint = try FramedUDPEndpoint(loop: group.ioLoops[0], ports: [0, 0],
                                                     router: try Self.agentRouter(ports: ports))
                defer { endpoint.close() }
                ports.set(endpoint.localAddresses.map(\.port))
                let client = try DatagramSocket()
                defer { client.close() }
                let valid = try Self.request(seq: 1)
                let body = Array(valid[8...])
                let malformed: [(String, [UInt8])] = [
                    ("empty", []),
                    ("shorter than the header", [1, 0, 0, 0, 2]),
                    ("7 bytes", Array(valid[0..<7])),
                    ("header only, length says more", Array(valid[0..<8])),
                    ("body shorter than the length", Array(valid.dropLast())),
                    ("body longer than the length", valid + [0]),
                    ("length says less", rawHeader(id: MessageID.getHostRequest.rawValue, length: Int32(body.count - 1)) + body),
                    ("negative length", rawHeader(id: MessageID.getHostRequest.rawValue, length: -1)),
                    ("negative length with a body", rawHeader(id: MessageID.getHostRequest.rawValue, length: -8) + body),
                    ("length above the datagram maximum",
                     rawHeader(id: MessageID.getHostRequest.rawValue, length: Int32(FrameParser.maxDatagramBodyLength + 1))),
                ]
                var seq: UInt32 = 100
                for (i, (name, bytes)) in malformed.enumerated() {
                    let port = ports.get()[i % 2]
                    try client.send(bytes, port: port)
                    // Datagrams from one socket to one port are handled in order: when this request's reply
                    // arrives, the malformed one before it has been looked at.
                    try client.send(try Self.request(seq: seq), port: port)
                    let (frame, from) = try client.receiveFrame()
                    #expect(try Self.response(frame).seq == seq, "after \(name)")
                    #expect(from == port)
                    #expect(endpoint.statistics.dropped == i + 1, "after \(name)")
                    seq += 1
                }
                #expect(endpoint.statistics.frames == malformed.count)
                #expect(endpoint.statistics.badBodies == 0)
            }
        }

        @Test("five clients at once, 50 requests each: every reply reaches the sender of its request",
              arguments: PollerKind.allCases)
        func repliesReachTheirSenders(poller: PollerKind) throws {
            try withGroup(poller: poller, ioLoops: 1) { group in
                let ports = Shared<[UInt16]>([])
                let endpoint = try FramedUDPEndpoint(loop: group.ioLoops[0], ports: [0, 0, 0],
                                                     router: try Self.agentRouter(ports: ports))
                defer { endpoint.close() }
                ports.set(endpoint.localAddresses.map(\.port))
                let clientCount = 5
                let perClient = 50
                let clients = try (0..<clientCount).map { _ in try DatagramSocket() }
                defer { for c in clients { c.close() } }
                let outcomes = Shared<[Int: [UInt32]]>([:])
                let failures = Shared<[String]>([])
                let done = EventCounter()
                let start = DispatchSemaphore(value: 0)
                for (c, client) in clients.enumerated() {
                    Thread {
                        start.wait()
                        var got: [UInt32] = []
                        do {
                            // All requests first (the clients interleave at the endpoint), then the replies.
                            for i in 0..<perClient {
                                let seq = UInt32(c * 1000 + i)
                                try client.send(try Self.request(seq: seq, modid: Int32(c)),
                                                port: ports.get()[i % 3])
                            }
                            for _ in 0..<perClient {
                                let (frame, _) = try client.receiveFrame()
                                let response = try Lars_GetHostResponse(serializedBytes: frame.body)
                                got.append(response.seq)
                                if response.modid != Int32(c) || response.host.port != Int32(client.localPort) {
                                    failures.update { $0.append("client \(c) got a reply for \(response.modid)") }
                                }
                            }
                        } catch {
                            failures.update { $0.append("client \(c): \(error)") }
                        }
                        outcomes.update { $0[c] = got }
                        done.signal()
                    }.start()
                }
                for _ in 0..<clientCount { start.signal() }
                #expect(done.wait(for: clientCount, timeout: 20))
                #expect(failures.get() == [])
                for c in 0..<clientCount {
                    let expected = Set((0..<perClient).map { UInt32(c * 1000 + $0) })
                    let got = outcomes.get()[c] ?? []
                    #expect(got.count == perClient, "client \(c)")
                    #expect(Set(got) == expected, "client \(c)")
                }
                #expect(endpoint.statistics.frames == clientCount * perClient)
                #expect(endpoint.statistics.dropped == 0)
            }
        }
    }
}
