import Dispatch
import Foundation
import Reactor
import Synchronization
import Testing
import TestSupport

#if canImport(Glibc)
import Glibc
#endif

/// Something a callback or a timer holds, for the tests below.
private final class Payload: Sendable {}

// What a loop that stops, and a connection that closes, let go of: nothing they will never use again stays alive
// (a cycle through the loop, its handlers, its timers or a connection's callbacks would keep it for good; the
// sanitizer's leak check found each of these). Checked with weak references, so the tests fail without sanitizers.
// They join the serialized suites of their subjects, so the run has no more suites side by side than before.

extension LoopTaskTimerTests {
    @Test("timers a stopping loop will never fire are released, also those scheduled while it winds down",
          arguments: PollerKind.allCases)
    func timersReleasedAtStop(poller: PollerKind) throws {
        let group = try EventLoopGroup(ioLoops: 0, configuration: LoopConfiguration(poller: poller))
        let loop = group.acceptorLoop
        weak var before: Payload?
        weak var windingDown: Payload?
        do {
            let early = Payload()
            let late = Payload()
            before = early
            windingDown = late
            // Both timers capture the loop as well: kept, they would keep it alive for good.
            loop.schedule(after: .seconds(3600)) { _ = early; _ = loop }
            loop.execute {
                loop.stop()
                // Runs as the loop winds down, on its thread: the timer it schedules can never fire.
                loop.execute { loop.schedule(after: .seconds(3600)) { _ = late; _ = loop } }
            }
        }
        group.shutdown()  // joins the loop's thread: run() has returned
        #expect(loop.hasFinished)
        #expect(before == nil, "a timer scheduled before the stop was kept")
        #expect(windingDown == nil, "a timer scheduled while the loop wound down was kept")
    }
}

extension ShutdownTests {
    @Test("a group shut down before its server closes its connections, once each; the server and all it held are freed",
          arguments: PollerKind.allCases)
    func groupShutdownClosesConnections(poller: PollerKind) throws {
        weak var weakServer: TCPServer?
        weak var weakConnection: TCPConnection?
        weak var weakLoop: EventLoop?
        weak var weakPayload: Payload?
        do {
            let group = try EventLoopGroup(ioLoops: 1, configuration: LoopConfiguration(poller: poller),
                                           placement: .roundRobin)
            weakLoop = group.ioLoops[0]
            let payload = Payload()
            weakPayload = payload
            // The callbacks keep the connection (as an application's session table does) and a payload.
            let opened = Shared<TCPConnection?>(nil)
            let connects = EventCounter()
            let closes = EventCounter()
            let reason = Shared<ReactorError?>(nil)
            let server = TCPServer(
                group: group, configuration: ServerConfiguration(port: 0),
                callbacks: ConnectionCallbacks(
                    onConnect: { c in
                        opened.set(c)
                        connects.signal()
                    },
                    onClose: { c in
                        _ = payload
                        reason.set(c.closeReason as? ReactorError)
                        closes.signal()
                    }))
            weakServer = server
            let port = try server.start().port
            let client = try BlockingSocket(port: port, receiveTimeout: 10)
            defer { client.close() }
            #expect(connects.wait(for: 1))
            weakConnection = opened.get()
            group.shutdown()
            #expect(closes.count == 1, "the connection was left open on the stopped loop")
            #expect(reason.get() == .loopStopped)
            #expect(server.connectionCount == 0)
            #expect(client.seesClose(), "the peer's connection stayed open")
            server.shutdown(timeout: .seconds(5))
            #expect(closes.count == 1)
        }
        #expect(eventually { weakServer == nil }, "the server was kept")
        #expect(eventually { weakConnection == nil }, "the connection was kept")
        #expect(eventually { weakLoop == nil }, "the loop was kept")
        #expect(eventually { weakPayload == nil }, "what the callbacks hold was kept")
    }

    @Test("a closed connection releases its callbacks: a connection they hold is freed with its server",
          arguments: PollerKind.allCases)
    func closedConnectionReleasesCallbacks(poller: PollerKind) throws {
        weak var weakConnection: TCPConnection?
        weak var weakServer: TCPServer?
        try withGroup(poller: poller, ioLoops: 1) { group in
            let opened = Shared<[TCPConnection]>([])
            let connects = EventCounter()
            let closes = EventCounter()
            let server = TCPServer(
                group: group, configuration: ServerConfiguration(port: 0),
                callbacks: ConnectionCallbacks(
                    onConnect: { c in
                        opened.update { $0.append(c) }
                        connects.signal()
                    },
                    onClose: { _ in closes.signal() }))
            weakServer = server
            let port = try server.start().port
            let client = try BlockingSocket(port: port, receiveTimeout: 10)
            #expect(connects.wait(for: 1))
            weakConnection = opened.get().first
            // Closed by the peer while everything runs: the loop forgets it; only the callbacks still hold it.
            client.close()
            #expect(closes.wait(for: 1))
            #expect(server.connectionCount == 0)
            server.shutdown(timeout: .seconds(5))
        }
        #expect(eventually { weakServer == nil }, "the server was kept")
        #expect(eventually { weakConnection == nil }, "the closed connection was kept by its callbacks")
    }
}
