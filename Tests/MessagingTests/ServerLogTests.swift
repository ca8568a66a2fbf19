import Foundation
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

        @Test("unknown ids from many connections log one line per episode; after the quiet interval a new one",
              arguments: PollerKind.allCases)
        func unknownLoggedOncePerEpisode(poller: PollerKind) throws {
            let lines = Shared<[CapturedLog]>([])
            try withGroup(poller: poller) { group in
                try withFramedServer(group: group, router: try echoRouter(), logQuietInterval: .seconds(1),
                                     logger: CapturingLogHandler.logger(into: lines)) { server, port in
                    let clients = try (0..<20).map { _ in try BlockingSocket.frameClient(port: port) }
                    defer { for c in clients { c.close() } }
                    // The burst: every connection sends four frames of ids without a route, then one the server
                    // echoes; the echo coming back means the four before it were handled.
                    for client in clients {
                        for id in Int32(60)..<64 { try client.sendFrame(id: id, body: [1]) }
                        try client.sendFrame(id: 10, body: [2])
                    }
                    for client in clients { #expect(try client.receiveFrame() == TestFrame(id: 10, body: [2])) }
                    #expect(server.statistics.unknownMessages == 80)
                    func unknownLines() -> [CapturedLog] { lines.get().filter { $0.metadata["message.id"] != nil } }
                    #expect(unknownLines().count == 1, "\(unknownLines())")
                    #expect(unknownLines().first?.metadata["message.id"] == "60")
                    #expect(unknownLines().allSatisfy { $0.level <= .info })
                    #expect(server.connectionCount == 20, "unknown ids do not close the connection")
                    // The quiet interval passes (time, not an event: nothing to await), then a new episode: one
                    // new line, and one that ends the burst's with its count.
                    usleep(1_300_000)
                    try clients[3].sendFrame(id: 70, body: [])
                    try clients[3].sendFrame(id: 10, body: [3])
                    #expect(try clients[3].receiveFrame() == TestFrame(id: 10, body: [3]))
                    #expect(unknownLines().count == 2, "\(unknownLines())")
                    #expect(unknownLines().last?.metadata["message.id"] == "70")
                    #expect(unknownLines().last?.metadata["peer.address"] == "127.0.0.1:\(clients[3].localPort)")
                    let ended = lines.get().filter { $0.message.contains("episode over") }
                    #expect(ended.count == 1 && ended.first?.metadata["count"] == "80", "\(ended)")
                }
            }
        }
    }
}
