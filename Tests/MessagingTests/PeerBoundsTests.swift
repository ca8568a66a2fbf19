import Foundation
import LarsWire
import Logging
import Messaging
import MetricsTestKit
import Reactor
import Testing
import TestSupport

extension MessagingSocketTests {
    @Suite("Head timeout, idle timeout and the partial frame budget", .serialized)
    struct PeerBoundsTests {
        @Test("by default every framed server has an idle timeout, a head timeout and a partial frame budget")
        func defaults() {
            let configuration = FramedServerConfiguration()
            #expect(configuration.idleTimeout == .seconds(300))
            #expect(configuration.headTimeout == .seconds(10))
            #expect(configuration.partialFrameBudgetBytes == 64 << 20)
            #expect(configuration.logQuietInterval == .seconds(10))
            #expect(throws: ConfigurationError.self) {
                try FramedServerConfiguration(logQuietInterval: .zero).validate()
            }
            #expect(throws: ConfigurationError.self) { try FramedServerConfiguration(headTimeout: .zero).validate() }
            #expect(throws: ConfigurationError.self) {
                try FramedServerConfiguration(partialFrameBudgetBytes: -1).validate()
            }
        }

        @Test("a peer that trickles a frame one byte at a time is closed at the head timeout; whole frames are not",
              arguments: PollerKind.allCases)
        func trickleClosedAtHeadTimeout(poller: PollerKind) throws {
            let lines = Shared<[CapturedLog]>([])
            try withGroup(poller: poller) { group in
                // The idle timeout is longer than the test: only the head timeout can close the trickler.
                try withFramedServer(group: group, router: try echoRouter(), idleTimeout: .seconds(30),
                                     headTimeout: .seconds(2),
                                     logger: CapturingLogHandler.logger(into: lines, level: .info)) { server, port in
                    let trickler = try BlockingSocket.frameClient(port: port, receiveTimeout: 10)
                    defer { trickler.close() }
                    let talker = try BlockingSocket.frameClient(port: port, receiveTimeout: 10)
                    defer { talker.close() }
                    let start = SystemInfo.monotonicNanoseconds()
                    // A header for a 1000-byte body, then one byte every 50 ms: never idle, never complete.
                    try trickler.sendAll(rawHeader(id: 10, length: 1000))
                    let stop = Shared(false)
                    let trickled = EventCounter()
                    Thread {
                        while !stop.get(), (try? trickler.sendAll([7])) != nil {
                            usleep(50_000)  // the trickler's pace
                        }
                        trickled.signal()
                    }.start()
                    // Meanwhile the talker sends whole frames, each in two pieces 50 ms apart, for longer than the
                    // head timeout: a frame that completes resets the clock.
                    let talked = EventCounter()
                    let talkerErrors = Shared<[String]>([])
                    Thread {
                        for n in 0..<60 {
                            do {
                                let frame = FrameParser.encode(messageID: 10, body: [UInt8(n), 1, 2, 3])
                                try talker.sendAll(Array(frame.prefix(5)))
                                usleep(50_000)  // the talker's pace
                                try talker.sendAll(Array(frame.dropFirst(5)))
                                let echoed = try talker.receiveFrame()
                                if echoed != TestFrame(id: 10, body: [UInt8(n), 1, 2, 3]) {
                                    talkerErrors.update { $0.append("\(echoed)") }
                                }
                            } catch {
                                talkerErrors.update { $0.append("\(error)") }
                                break
                            }
                        }
                        talked.signal()
                    }.start()
                    #expect(trickler.seesClose())
                    let elapsed = secondsSince(start)
                    stop.set(true)
                    #expect(trickled.wait(for: 1))
                    #expect(talked.wait(for: 1, timeout: 20))
                    #expect(talkerErrors.get() == [])
                    #expect(elapsed >= 1.95, "closed after \(elapsed) s")
                    #expect(elapsed < 10, "closed after \(elapsed) s")
                    #expect(server.statistics.headTimeouts == 1)
                    #expect(server.statistics.idleClosed == 0)
                    #expect(eventually { server.connectionCount == 1 })
                    try talker.sendFrame(id: 10, body: [9])
                    #expect(try talker.receiveFrame() == TestFrame(id: 10, body: [9]))
                    let logged = lines.get().filter { $0.message.contains("head timeout") }
                    #expect(logged.count == 1, "\(logged)")
                }
            }
        }

        @Test("a silent peer is closed at the idle timeout, a heartbeating one is not; 20 silent ones log one line",
              arguments: PollerKind.allCases)
        func silentClosedHeartbeatingKept(poller: PollerKind) throws {
            let lines = Shared<[CapturedLog]>([])
            let serverCloses = EventCounter()
            try withGroup(poller: poller) { group in
                try withFramedServer(group: group, router: try echoRouter(), idleTimeout: .milliseconds(1500),
                                     headTimeout: .seconds(30),
                                     logger: CapturingLogHandler.logger(into: lines, level: .info),
                                     onClose: { _ in serverCloses.signal() }) { server, port in
                    let connected = EventCounter()
                    let clientCloses = EventCounter()
                    let heartbeating = try FramedClient(
                        loop: group.ioLoops[1],
                        configuration: FramedClientConfiguration(
                            client: ClientConfiguration(port: Int(port), reconnect: false),
                            heartbeatInterval: .milliseconds(100)),
                        router: MessageRouter<TCPConnection>(),
                        onConnect: { _ in connected.signal() },
                        onClose: { _ in clientCloses.signal() })
                    defer { heartbeating.disconnect() }
                    heartbeating.connect()
                    #expect(connected.wait(for: 1))
                    // Silent peers: one that sent a header only, and plain silent ones.
                    let start = SystemInfo.monotonicNanoseconds()
                    let silent = try (0..<20).map { _ in
                        try BlockingSocket.frameClient(port: port, receiveTimeout: 10)
                    }
                    defer { for s in silent { s.close() } }
                    try silent[0].sendAll(rawHeader(id: 10, length: 100))
                    for s in silent { #expect(s.seesClose()) }
                    let elapsed = secondsSince(start)
                    #expect(elapsed >= 1.45, "closed after \(elapsed) s")
                    #expect(serverCloses.wait(for: 20))
                    #expect(server.statistics.idleClosed == 20)
                    // Several idle timeouts later the heartbeating client is still there.
                    #expect(eventually(timeout: 15) { server.statistics.heartbeats >= 35 })
                    #expect(clientCloses.count == 0)
                    #expect(server.connectionCount == 1)
                    let logged = lines.get().filter { $0.message.contains("idle timeout") }
                    #expect(logged.count == 1, "\(logged)")
                }
            }
        }

        @Test("partial frames beyond the server's budget: the connection that crosses it is closed, the rest served",
              arguments: PollerKind.allCases)
        func budgetClosesOverBudget(poller: PollerKind) throws {
            let lines = Shared<[CapturedLog]>([])
            try withGroup(poller: poller) { group in
                let budget = 1 << 20
                try withFramedServer(group: group, router: try echoRouter(), idleTimeout: .seconds(30),
                                     headTimeout: .seconds(30), partialFrameBudgetBytes: budget,
                                     logger: CapturingLogHandler.logger(into: lines, level: .info)) { server, port in
                    // Six peers each hold 300 KiB of a 320 KiB frame: 1.8 MiB wanted, 1 MiB allowed.
                    let holders = try (0..<6).map { _ in
                        try BlockingSocket.frameClient(port: port, receiveTimeout: 10)
                    }
                    defer { for h in holders { h.close() } }
                    for h in holders {
                        // A holder the server closes while it sends sees the reset here.
                        try? h.sendAll(rawHeader(id: 10, length: 320 << 10) + [UInt8](repeating: 1, count: 300 << 10))
                        usleep(20_000)  // one after the other, so each share arrives before the next
                    }
                    #expect(eventually { server.statistics.budgetClosed >= 3 })
                    #expect(eventually { server.connectionCount == 6 - server.statistics.budgetClosed })
                    #expect(server.statistics.partialFrameBytes <= budget)
                    #expect(server.statistics.partialFrameBytes > 0)
                    // The survivors still finish their frames and get them back.
                    let closed = holders.filter { $0.seesCloseWithin(milliseconds: 200) }
                    #expect(closed.count == server.statistics.budgetClosed)
                    let survivor = try #require(holders.first { h in !closed.contains { $0 === h } })
                    try survivor.sendAll([UInt8](repeating: 1, count: 20 << 10))
                    let echoed = try survivor.receiveFrame()
                    #expect(echoed.body.count == 320 << 10)
                    let logged = lines.get().filter { $0.message.contains("budget") }
                    #expect(logged.count == 1, "\(logged)")
                }
            }
        }

        @Test("idle, head timeout and budget closes and unknown ids are swift-metrics counters named by the server",
              arguments: PollerKind.allCases)
        func boundsAreMetrics(poller: PollerKind) throws {
            let metrics = TestMetrics()
            let logger = Logger(label: "test.metrics", factory: { _ in SwiftLogNoOpLogHandler() })
            try withGroup(poller: poller) { group in
                try withFramedServer(group: group, router: try echoRouter(), idleTimeout: .seconds(5),
                                     headTimeout: .milliseconds(300), partialFrameBudgetBytes: 4096,
                                     logger: logger, metricsFactory: metrics) { server, port in
                    let peers = try (0..<4).map { _ in try BlockingSocket.frameClient(port: port, receiveTimeout: 10) }
                    defer { for p in peers { p.close() } }
                    // 0 crosses the budget at once; 1 starts a frame and stops (head timeout); 2 and 3 fall silent
                    // (idle timeout), 3 after a frame of an id without a route. 1 starts once 0 is closed and its
                    // share has left the budget (its close callback, which may run after the peer sees the close):
                    // otherwise 1's bytes could be the ones that cross the budget.
                    try? peers[0].sendAll(rawHeader(id: 10, length: 8000) + [UInt8](repeating: 1, count: 5000))
                    #expect(peers[0].seesClose())
                    #expect(eventually { server.statistics.partialFrameBytes == 0 })
                    try peers[1].sendAll(rawHeader(id: 10, length: 100) + [1, 2, 3])
                    try peers[3].sendFrame(id: 77, body: [1])
                    for p in peers { #expect(p.seesClose()) }
                    #expect(eventually { server.connectionCount == 0 })
                    #expect(server.statistics.budgetClosed == 1)
                    #expect(server.statistics.headTimeouts == 1)
                    #expect(server.statistics.idleClosed == 2)
                    #expect(server.statistics.unknownMessages == 1)
                    let dimensions = [("server", "test.metrics")]
                    let expected: [(String, Int)] = [
                        ("switchyard_framed_budget_closed_total", server.statistics.budgetClosed),
                        ("switchyard_framed_head_timeout_closed_total", server.statistics.headTimeouts),
                        ("switchyard_framed_idle_closed_total", server.statistics.idleClosed),
                        ("switchyard_framed_unknown_messages_total", server.statistics.unknownMessages),
                    ]
                    for (label, value) in expected {
                        let counter = try metrics.expectCounter(label, dimensions)
                        #expect(counter.totalValue == Int64(value), "\(label)")
                    }
                }
            }
        }
    }
}

extension BlockingSocket {
    /// True when the peer has closed (EOF or reset) within `milliseconds`, without consuming data that is not an end.
    func seesCloseWithin(milliseconds: Int32) -> Bool {
        var p = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
        guard poll(&p, 1, milliseconds) > 0 else { return false }
        var byte: UInt8 = 0
        let n = recv(fd, &byte, 1, Int32(MSG_PEEK | MSG_DONTWAIT))
        return n == 0 || (n < 0 && errno != EAGAIN)
    }
}
