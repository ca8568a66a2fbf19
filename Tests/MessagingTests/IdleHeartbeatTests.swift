import Dispatch
import Foundation
import Messaging
import Reactor
import Synchronization
import Testing
import TestSupport

extension MessagingSocketTests {
    @Suite("Idle timeout and heartbeats", .serialized)
    struct IdleHeartbeatTests {
        static let idleTimeout = Duration.seconds(1)

        @Test("a silent connection is closed after the idle timeout; a talking one is not",
              arguments: PollerKind.allCases)
        func silentConnectionClosed(poller: PollerKind) throws {
            let closes = EventCounter()
            let closedIDs = Shared<[UInt64]>([])
            let serverIDs = Shared<[UInt16: UInt64]>([:])
            try withGroup(poller: poller) { group in
                try withFramedServer(group: group, router: try echoRouter(), idleTimeout: Self.idleTimeout,
                                     onConnect: { c in serverIDs.update { $0[c.peerAddress.port] = c.id } },
                                     onClose: { c in
                                         closedIDs.update { $0.append(c.id) }
                                         closes.signal()
                                     }) { server, port in
                    let start = SystemInfo.monotonicNanoseconds()
                    let silent = try BlockingSocket.frameClient(port: port, receiveTimeout: 5)
                    defer { silent.close() }
                    let talking = try BlockingSocket.frameClient(port: port, receiveTimeout: 5)
                    defer { talking.close() }
                    // The talking client sends a frame every 100 ms (a tenth of the timeout) until the silent
                    // one has been closed.
                    let stop = Shared(false)
                    let talkerDone = EventCounter()
                    let talkerErrors = Shared<[String]>([])
                    Thread {
                        var n: UInt8 = 0
                        while !stop.get() {
                            do {
                                try talking.sendFrame(id: 10, body: [n])
                                let frame = try talking.receiveFrame()
                                if frame != TestFrame(id: 10, body: [n]) { talkerErrors.update { $0.append("\(frame)") } }
                            } catch {
                                talkerErrors.update { $0.append("\(error)") }
                                break
                            }
                            n &+= 1
                            usleep(100_000)  // the talker's pace, not a wait for an event
                        }
                        talkerDone.signal()
                    }.start()
                    #expect(silent.seesClose())
                    let elapsed = secondsSince(start)
                    #expect(closes.wait(for: 1))
                    stop.set(true)
                    #expect(talkerDone.wait(for: 1))
                    #expect(elapsed >= 0.99, "closed after \(elapsed) s")
                    #expect(elapsed < 5.0, "closed after \(elapsed) s")
                    #expect(closedIDs.get() == [serverIDs.get()[silent.localPort]])
                    #expect(talkerErrors.get() == [])
                    #expect(server.connectionCount == 1)
                    #expect(server.statistics.protocolErrors == 0)
                }
            }
        }

        @Test("a FramedClient with heartbeats stays connected over several idle periods; heartbeats reach no handler",
              arguments: PollerKind.allCases)
        func heartbeatsKeepConnectionOpen(poller: PollerKind) throws {
            let handled = EventCounter()
            let unknown = EventCounter()
            let serverCloses = EventCounter()
            let clientCloses = EventCounter()
            let connected = EventCounter()
            let replies = EventCounter()
            try withGroup(poller: poller) { group in
                let router = MessageRouter<TCPConnection>()
                try router.on(TestID(10)) { message in
                    handled.signal()
                    message.connection.sendFrameInLoop(messageID: 10, body: message.body)
                }
                try router.onUnknown { _ in unknown.signal() }
                try withFramedServer(group: group, router: router, idleTimeout: Self.idleTimeout,
                                     onClose: { _ in serverCloses.signal() }) { server, port in
                    let clientRouter = MessageRouter<TCPConnection>()
                    try clientRouter.on(TestID(10)) { _ in replies.signal() }
                    let client = try FramedClient(
                        loop: group.ioLoops[1],
                        configuration: FramedClientConfiguration(
                            client: ClientConfiguration(port: Int(port), reconnect: false),
                            heartbeatInterval: .milliseconds(100)),
                        router: clientRouter,
                        onConnect: { _ in connected.signal() },
                        onClose: { _ in clientCloses.signal() })
                    defer { client.disconnect() }
                    let start = SystemInfo.monotonicNanoseconds()
                    client.connect()
                    #expect(connected.wait(for: 1))
                    // About one heartbeat per 100-150 ms: 25 take at least 2.5 s, more than two idle timeouts.
                    #expect(eventually(timeout: 15, interval: 5_000) { server.statistics.heartbeats >= 25 })
                    let elapsed = secondsSince(start)
                    #expect(elapsed > 2.0, "25 heartbeats in \(elapsed) s")
                    #expect(serverCloses.count == 0)
                    #expect(clientCloses.count == 0)
                    #expect(server.connectionCount == 1)
                    #expect(handled.count == 0)
                    #expect(unknown.count == 0)
                    #expect(server.statistics.frames == 0)
                    #expect(server.statistics.unknownMessages == 0)
                    // The connection still carries requests.
                    #expect(client.sendFrame(messageID: 10, body: [1]))
                    #expect(replies.wait(for: 1))
                    #expect(handled.count == 1)
                    #expect(serverCloses.count == 0)
                }
            }
        }

        @Test("a heartbeating client whose loop stops while connected closes once and is freed with its timer",
              arguments: PollerKind.allCases)
        func heartbeatingClientReleasedAtStop(poller: PollerKind) throws {
            weak var weakClient: FramedClient?
            weak var weakConnection: TCPConnection?
            weak var weakLoop: EventLoop?
            let clientCloses = EventCounter()
            try withGroup(poller: poller, ioLoops: 1) { serverGroup in
                try withFramedServer(group: serverGroup, router: MessageRouter<TCPConnection>()) { server, port in
                    let clientGroup = try EventLoopGroup(ioLoops: 1, configuration: LoopConfiguration(poller: poller),
                                                         placement: .roundRobin)
                    defer { clientGroup.shutdown() }
                    weakLoop = clientGroup.ioLoops[0]
                    let connected = EventCounter()
                    let client = try FramedClient(
                        loop: clientGroup.ioLoops[0],
                        configuration: FramedClientConfiguration(
                            client: ClientConfiguration(port: Int(port), reconnect: true),
                            heartbeatInterval: .milliseconds(50)),
                        router: MessageRouter<TCPConnection>(),
                        onConnect: { _ in connected.signal() },
                        onClose: { _ in clientCloses.signal() })
                    weakClient = client
                    client.connect()
                    #expect(connected.wait(for: 1))
                    weakConnection = client.connection
                    #expect(eventually { server.statistics.heartbeats >= 1 })
                    // Stopped with the connection open, its heartbeat timer armed and a reconnect wanted.
                    clientGroup.shutdown()
                    #expect(clientCloses.count == 1, "the client's connection stayed open on its stopped loop")
                    #expect(client.connection == nil)
                    #expect(eventually { server.connectionCount == 0 }, "the server still sees the client")
                }
            }
            #expect(clientCloses.count == 1)
            #expect(eventually { weakClient == nil }, "the client was kept")
            #expect(eventually { weakConnection == nil }, "the client's connection was kept")
            #expect(eventually { weakLoop == nil }, "the client's loop was kept")
        }
    }
}
