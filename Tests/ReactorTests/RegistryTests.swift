import EchoServer
import Dispatch
import Foundation
import Reactor
import Synchronization
import Testing
import TestSupport

#if canImport(Glibc)
import Glibc
#endif

/// A server on a fresh group with the given callbacks and limits, torn down when `body` returns.
private func withServer<R>(
    poller: PollerKind, ioLoops: Int = 2, maxConnections: Int = 100_000, callbacks: ConnectionCallbacks,
    _ body: (TCPServer, UInt16) throws -> R
) throws -> R {
    try withGroup(poller: poller, ioLoops: ioLoops) { group in
        let server = TCPServer(
            group: group, configuration: ServerConfiguration(port: 0, maxConnections: maxConnections),
            callbacks: callbacks)
        let address = try server.start()
        defer { server.shutdown(timeout: .seconds(2)) }
        return try body(server, address.port)
    }
}

@Suite("Server registry: count, send by id, broadcast, close, connection limit", .serialized)
struct RegistryTests {
    @Test("send by id and broadcast from a non-loop thread reach exactly their clients; close by id closes one",
          arguments: PollerKind.allCases)
    func sendBroadcastClose(poller: PollerKind) throws {
        let n = 20
        let connects = EventCounter()
        let closes = EventCounter()
        let idByPeerPort = Shared<[UInt16: UInt64]>([:])
        let closedIDs = Shared<[UInt64]>([])
        let callbacks = ConnectionCallbacks(
            onConnect: { c in
                idByPeerPort.update { $0[c.peerAddress.port] = c.id }
                connects.signal()
            },
            onData: { _, bytes in bytes.consumeAll() },  // the server itself never answers
            onClose: { c in
                closedIDs.update { $0.append(c.id) }
                closes.signal()
            })
        try withServer(poller: poller, callbacks: callbacks) { server, port in
            var clients: [BlockingSocket] = []
            defer { for c in clients { c.close() } }
            for _ in 0..<n {
                let c = try BlockingSocket(port: port)
                c.setReceiveTimeout(seconds: 10)
                clients.append(c)
            }
            #expect(connects.wait(for: n))
            #expect(server.connectionCount == n)
            #expect(Set(server.connectionIDs).count == n)
            let ids = idByPeerPort.get()
            let clientIDs = try clients.map { c in try #require(ids[localPort(of: c.fd)]) }
            #expect(Set(clientIDs) == Set(server.connectionIDs))
            for id in clientIDs { #expect(server.connection(id: id)?.id == id) }

            // From threads that are not loops: one targeted message, then a broadcast.
            let target = 7
            let direct = Array("direct to 7|".utf8)
            let broadcast = Array("to everyone|".utf8)
            let sent = EventCounter()
            let directAccepted = Shared(false)
            Thread {
                directAccepted.set(server.send(to: clientIDs[target], direct))
                server.broadcast(broadcast)
                sent.signal()
            }.start()
            #expect(sent.wait(for: 1))
            #expect(directAccepted.get())
            for (i, c) in clients.enumerated() {
                let expected = i == target ? direct + broadcast : broadcast
                let got = try c.receive(exactly: expected.count)
                #expect(got == expected, "client \(i) got \(String(decoding: got, as: UTF8.self))")
            }

            // Close exactly one by id: that client sees EOF, the others stay.
            let victim = 3
            #expect(server.close(connection: clientIDs[victim]))
            #expect(try clients[victim].receiveUntilClose() == [], "the closed client should see a bare EOF")
            clients[victim].close()  // our FIN ends the server's linger
            #expect(closes.wait(for: 1))
            #expect(closedIDs.get() == [clientIDs[victim]])
            #expect(server.connectionCount == n - 1)
            #expect(server.connection(id: clientIDs[victim]) == nil)
            #expect(server.send(to: clientIDs[victim], direct) == false)
            #expect(!server.connectionIDs.contains(clientIDs[victim]))

            // Unknown ids.
            let unknown = UInt64.max
            #expect(server.connection(id: unknown) == nil)
            #expect(server.send(to: unknown, direct) == false)
            #expect(server.close(connection: unknown) == false)

            // The others are still served: a second broadcast reaches exactly the n - 1 left.
            let again = Array("again|".utf8)
            let sent2 = EventCounter()
            Thread {
                server.broadcast(again)
                sent2.signal()
            }.start()
            #expect(sent2.wait(for: 1))
            for (i, c) in clients.enumerated() where i != victim {
                #expect(try c.receive(exactly: again.count) == again)
            }
            #expect(closes.count == 1)
            clients.remove(at: victim)
        }
    }

    @Test("maxConnections: beyond the limit a client is refused; after one leaves a new one is served",
          arguments: PollerKind.allCases)
    func connectionLimit(poller: PollerKind) throws {
        let limit = 3
        let connects = EventCounter()
        let closes = EventCounter()
        let callbacks = EchoService.callbacks(onConnect: { _ in connects.signal() }, onClose: { _ in closes.signal() })
        try withServer(poller: poller, maxConnections: limit, callbacks: callbacks) { server, port in
            var clients: [BlockingSocket] = []
            defer { for c in clients { c.close() } }
            for _ in 0..<limit {
                let c = try BlockingSocket(port: port)
                c.setReceiveTimeout(seconds: 10)
                clients.append(c)
            }
            #expect(connects.wait(for: limit))
            #expect(server.connectionCount == limit)

            // The kernel completes the handshake; the server accepts and closes at once.
            let extra = try BlockingSocket(port: port)
            extra.setReceiveTimeout(seconds: 10)
            let refused: Bool
            do {
                refused = try extra.receiveUntilClose().isEmpty
            } catch let e as POSIXError where e.code == .ECONNRESET {
                refused = true
            }
            extra.close()
            #expect(refused, "the client over the limit was not closed")
            #expect(eventually { server.refusedCount == 1 })
            #expect(connects.count == limit)
            #expect(server.connectionCount == limit)

            // The admitted clients still echo.
            for c in clients {
                try c.sendAll([1, 2, 3])
                #expect(try c.receive(exactly: 3) == [1, 2, 3])
            }

            // One leaves: a newcomer is accepted and served.
            clients.removeFirst().close()
            #expect(closes.wait(for: 1))
            #expect(server.connectionCount == limit - 1)
            let newcomer = try BlockingSocket(port: port)
            newcomer.setReceiveTimeout(seconds: 10)
            clients.append(newcomer)
            #expect(connects.wait(for: limit + 1))
            try newcomer.sendAll(Array("hello".utf8))
            #expect(try newcomer.receive(exactly: 5) == Array("hello".utf8))
            #expect(server.connectionCount == limit)
            #expect(server.refusedCount == 1)
        }
    }
}
