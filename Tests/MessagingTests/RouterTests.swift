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
    @Suite("Router and hooks", .serialized)
    struct RouterTests {
        @Test("registering an id twice throws duplicateRoute at registration; the heartbeat id is reserved")
        func duplicateAndReserved() throws {
            let router = MessageRouter<TCPConnection>()
            try router.on(TestID(5)) { _ in }
            #expect(throws: RouterError.duplicateRoute(5)) { try router.on(TestID(5)) { _ in } }
            #expect(throws: RouterError.duplicateRoute(5)) {
                try router.on(TestID(5), as: Lars_GetRouteRequest.self) { _, _ in }
            }
            // Sparse ids (outside the dense table) too.
            try router.on(TestID(70_000)) { _ in }
            #expect(throws: RouterError.duplicateRoute(70_000)) { try router.on(TestID(70_000)) { _ in } }
            try router.on(TestID(-3)) { _ in }
            #expect(throws: RouterError.duplicateRoute(-3)) { try router.on(TestID(-3)) { _ in } }
            #expect(throws: RouterError.reservedID(ReservedMessageID.heartbeat)) { try router.on(MessageID.heartbeat) { _ in } }
            #expect(throws: RouterError.reservedID(ReservedMessageID.heartbeat)) {
                try router.on(MessageID.heartbeat, as: Lars_GetRouteRequest.self) { _, _ in }
            }
            #expect(router.hasRoute(TestID(5)) && router.hasRoute(TestID(70_000)) && router.hasRoute(TestID(-3)))
            #expect(!router.hasRoute(MessageID.heartbeat) && !router.hasRoute(TestID(6)))
        }

        @Test("routes cannot be added once the server has started", arguments: PollerKind.allCases)
        func frozenAfterStart(poller: PollerKind) throws {
            try withGroup(poller: poller) { group in
                let router = try echoRouter()
                try withFramedServer(group: group, router: router) { _, port in
                    #expect(throws: RouterError.routerFrozen) { try router.on(TestID(11)) { _ in } }
                    #expect(throws: RouterError.routerFrozen) { try router.on(TestID(12), as: Lars_GetRouteRequest.self) { _, _ in } }
                    #expect(throws: RouterError.routerFrozen) { try router.onUnknown { _ in } }
                    // The existing route still works.
                    let client = try BlockingSocket.frameClient(port: port)
                    defer { client.close() }
                    try client.sendFrame(id: 10, body: [1, 2, 3])
                    #expect(try client.receiveFrame() == TestFrame(id: 10, body: [1, 2, 3]))
                }
            }
        }

        @Test("an unknown id is counted, the connection stays open and still answers a known id",
              arguments: PollerKind.allCases)
        func unknownDefaultPath(poller: PollerKind) throws {
            let closes = EventCounter()
            try withGroup(poller: poller) { group in
                let router = try echoRouter()
                try withFramedServer(group: group, router: router, onClose: { _ in closes.signal() }) { server, port in
                    let client = try BlockingSocket.frameClient(port: port)
                    defer { client.close() }
                    try client.sendFrame(id: 77, body: [9, 9])
                    try client.sendFrame(id: 78, body: [])
                    try client.sendFrame(id: 10, body: [4, 5])
                    // Frames are handled in order: the echo of 10 comes after both unknown frames were handled.
                    #expect(try client.receiveFrame() == TestFrame(id: 10, body: [4, 5]))
                    #expect(server.statistics.unknownMessages == 2)
                    #expect(router.unknownMessages == 2)
                    #expect(server.statistics.protocolErrors == 0)
                    #expect(server.statistics.frames == 3)
                    // Still open: another unknown, then another known frame.
                    try client.sendFrame(id: 5000, body: [1])
                    try client.sendFrame(id: 10, body: [6])
                    #expect(try client.receiveFrame() == TestFrame(id: 10, body: [6]))
                    #expect(server.statistics.unknownMessages == 3)
                    #expect(server.connectionCount == 1)
                    #expect(closes.count == 0)
                }
            }
        }

        @Test("onUnknown receives frames without a route, with their id and body", arguments: PollerKind.allCases)
        func unknownHandler(poller: PollerKind) throws {
            let seen = Shared<[TestFrame]>([])
            try withGroup(poller: poller) { group in
                let router = try echoRouter()
                try router.onUnknown { message in
                    seen.update { $0.append(TestFrame(id: message.messageID, body: message.bodyBytes)) }
                    // Answer with id 999 and the unknown id as the body.
                    let reply = withUnsafeBytes(of: message.messageID.littleEndian) { Array($0) } + message.bodyBytes
                    message.connection.sendFrame(messageID: 999, body: reply)
                }
                try withFramedServer(group: group, router: router) { server, port in
                    let client = try BlockingSocket.frameClient(port: port)
                    defer { client.close() }
                    try client.sendFrame(id: 321, body: [7, 8, 9])
                    let reply = try client.receiveFrame()
                    #expect(reply.id == 999)
                    #expect(reply.body == withUnsafeBytes(of: Int32(321).littleEndian) { Array($0) } + [7, 8, 9])
                    try client.sendFrame(id: 10, body: [1])
                    #expect(try client.receiveFrame() == TestFrame(id: 10, body: [1]))
                    #expect(seen.get() == [TestFrame(id: 321, body: [7, 8, 9])])
                    // Handled by the unknown handler: not counted as unknown.
                    #expect(server.statistics.unknownMessages == 0)
                    #expect(router.unknownMessages == 0)
                }
            }
        }

        @Test("each route's user data reaches its handler", arguments: PollerKind.allCases)
        func perRouteUserData(poller: PollerKind) throws {
            struct Tag: Sendable, Equatable { let name: String }
            let seen = Shared<[String]>([])
            try withGroup(poller: poller) { group in
                let router = MessageRouter<TCPConnection>()
                let handler: MessageRouter<TCPConnection>.Handler = { message in
                    let description: String
                    switch message.userData {
                    case let tag as Tag: description = "tag:\(tag.name)"
                    case let n as Int: description = "int:\(n)"
                    case nil: description = "none"
                    default: description = "other"
                    }
                    seen.update { $0.append("\(message.messageID)=\(description)") }
                    message.connection.sendFrame(messageID: message.messageID, body: Array(description.utf8))
                }
                try router.on(TestID(20), userData: Tag(name: "alpha"), handler)
                try router.on(TestID(21), userData: 42, handler)
                try router.on(TestID(22), handler)
                try router.on(TestID(100_000), userData: Tag(name: "sparse"), handler)
                try router.on(TestID(23), as: Lars_GetRouteRequest.self, userData: Tag(name: "typed")) { request, message in
                    let name = (message.userData as? Tag)?.name ?? "missing"
                    seen.update { $0.append("23=typed:\(name):\(request.modid)") }
                    message.connection.sendFrame(messageID: 23, body: Array(name.utf8))
                }
                try withFramedServer(group: group, router: router) { _, port in
                    let client = try BlockingSocket.frameClient(port: port)
                    defer { client.close() }
                    var request = Lars_GetRouteRequest()
                    request.modid = 17
                    try client.sendFrame(id: 21, body: [])
                    try client.sendFrame(id: 20, body: [])
                    try client.sendFrame(id: 100_000, body: [])
                    try client.sendFrame(id: 22, body: [])
                    try client.sendFrame(id: 23, body: try request.serializedBytes())
                    let replies = try (0..<5).map { _ in try client.receiveFrame() }
                    #expect(replies.map { String(decoding: $0.body, as: UTF8.self) }
                            == ["int:42", "tag:alpha", "tag:sparse", "none", "typed"])
                    #expect(seen.get() == ["21=int:42", "20=tag:alpha", "100000=tag:sparse", "22=none",
                                           "23=typed:typed:17"])
                }
            }
        }

        @Test("connect and close hooks fire once each on server and client, with the connection's context",
              arguments: PollerKind.allCases)
        func hooksOnBothSides(poller: PollerKind) throws {
            let serverConnects = EventCounter()
            let serverCloses = EventCounter()
            let clientConnects = EventCounter()
            let clientCloses = EventCounter()
            let serverContextAtClose = Shared<String?>(nil)
            let clientContextAtClose = Shared<String?>(nil)
            let contextInHandler = Shared<[String]>([])
            let replies = EventCounter()
            try withGroup(poller: poller) { group in
                let serverRouter = MessageRouter<TCPConnection>()
                try serverRouter.on(TestID(30)) { message in
                    contextInHandler.update { $0.append("server:\(message.connection.context as? String ?? "nil")") }
                    message.connection.sendFrameInLoop(messageID: 31, body: message.body)
                }
                try withFramedServer(
                    group: group, router: serverRouter,
                    onConnect: { connection in
                        if connection.context != nil { contextInHandler.update { $0.append("context set early") } }
                        connection.context = "server-session-\(connection.id)"
                        serverConnects.signal()
                    },
                    onClose: { connection in
                        serverContextAtClose.set(connection.context as? String)
                        serverCloses.signal()
                    }
                ) { server, port in
                    let clientRouter = MessageRouter<TCPConnection>()
                    try clientRouter.on(TestID(31)) { message in
                        contextInHandler.update { $0.append("client:\(message.connection.context as? String ?? "nil")") }
                        replies.signal()
                    }
                    let client = try FramedClient(
                        loop: group.ioLoops[0],
                        configuration: FramedClientConfiguration(
                            client: ClientConfiguration(port: Int(port), reconnect: false)),
                        router: clientRouter,
                        onConnect: { connection in
                            connection.context = "client-session"
                            clientConnects.signal()
                            connection.sendFrame(messageID: 30, body: [1, 2])
                        },
                        onClose: { connection in
                            clientContextAtClose.set(connection.context as? String)
                            clientCloses.signal()
                        })
                    client.connect()
                    #expect(clientConnects.wait(for: 1))
                    #expect(serverConnects.wait(for: 1))
                    #expect(replies.wait(for: 1))
                    client.disconnect()
                    #expect(clientCloses.wait(for: 1))
                    #expect(serverCloses.wait(for: 1))
                    // Let every loop finish what it had queued; no hook may fire a second time.
                    for loop in group.allLoops { _ = try onLoop(loop) { true } }
                    #expect(serverConnects.count == 1)
                    #expect(serverCloses.count == 1)
                    #expect(clientConnects.count == 1)
                    #expect(clientCloses.count == 1)
                    #expect(server.connectionCount == 0)
                    let serverContext = serverContextAtClose.get()
                    #expect(serverContext?.hasPrefix("server-session-") == true)
                    #expect(clientContextAtClose.get() == "client-session")
                    #expect(contextInHandler.get() == ["server:\(serverContext ?? "?")", "client:client-session"])
                }
            }
        }
    }
}
