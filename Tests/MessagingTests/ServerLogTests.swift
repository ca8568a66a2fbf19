import Logging
import Messaging
import Reactor
import Testing
import TestSupport

extension MessagingSocketTests {
    @Suite("What a framed server logs", .serialized)
    struct ServerLogTests {
        @Test("a protocol error logs one line with the peer and the reason", arguments: PollerKind.allCases)
        func protocolErrorLogsOnce(poller: PollerKind) throws {
            let lines = Shared<[CapturedLog]>([])
            try withGroup(poller: poller) { group in
                try withFramedServer(group: group, router: try echoRouter(), maxBodyLength: 1024,
                                     logger: CapturingLogHandler.logger(into: lines)) { server, port in
                    let client = try BlockingSocket.frameClient(port: port, receiveTimeout: 5)
                    defer { client.close() }
                    let peer = "127.0.0.1:\(client.localPort)"
                    // Two bad headers in one write: the first closes the connection, the second is never judged.
                    try client.sendAll(rawHeader(id: 10, length: 5000) + rawHeader(id: 10, length: -1))
                    #expect(client.seesClose())
                    #expect(eventually { server.connectionCount == 0 })
                    let errors = lines.get().filter { $0.message.contains("protocol error") }
                    #expect(errors.count == 1, "\(errors)")
                    #expect(errors.first?.metadata["peer.address"] == peer)
                    #expect(errors.first?.metadata["reason"]?.contains("5000") == true)
                    #expect(errors.first?.metadata["reason"]?.contains("1024") == true)
                    #expect(server.statistics.protocolErrors == 1)
                }
            }
        }

        @Test("unknown ids are logged once per connection", arguments: PollerKind.allCases)
        func unknownLoggedOncePerConnection(poller: PollerKind) throws {
            let lines = Shared<[CapturedLog]>([])
            try withGroup(poller: poller) { group in
                try withFramedServer(group: group, router: try echoRouter(),
                                     logger: CapturingLogHandler.logger(into: lines)) { server, port in
                    let clients = try (0..<2).map { _ in try BlockingSocket.frameClient(port: port) }
                    defer { for c in clients { c.close() } }
                    for client in clients {
                        for id in Int32(60)..<64 { try client.sendFrame(id: id, body: [1]) }
                        try client.sendFrame(id: 10, body: [2])
                        #expect(try client.receiveFrame() == TestFrame(id: 10, body: [2]))
                    }
                    #expect(server.statistics.unknownMessages == 8)
                    let unknownLines = lines.get().filter { $0.metadata["message.id"] != nil }
                    #expect(unknownLines.count == 2, "\(unknownLines)")
                    #expect(Set(unknownLines.compactMap { $0.metadata["peer.address"] })
                            == Set(clients.map { "127.0.0.1:\($0.localPort)" }))
                    #expect(unknownLines.allSatisfy { $0.metadata["message.id"] == "60" && $0.level <= .info })
                }
            }
        }
    }
}
