import Foundation
import Reactor
import Testing
import TestSupport

#if canImport(Glibc)
import Glibc
#endif

@Suite("Gather writes (sendInLoop(gathering:))")
struct GatherWriteTests {
    /// A server that answers each connection with `pieces` in one gather write, then closes after the flush.
    private func withGatherServer<R>(poller: PollerKind, pieces: [[UInt8]], repeats: Int,
                                     _ body: (UInt16) throws -> R) throws -> R {
        try withGroup(poller: poller, ioLoops: 1) { group in
            let server = TCPServer(
                group: group, configuration: ServerConfiguration(port: 0),
                callbacks: ConnectionCallbacks(onConnect: { connection in
                    for _ in 0..<repeats {
                        var pointers: [UnsafeRawBufferPointer] = []
                        // Pinned for the call: the arrays live in `pieces` and are not mutated.
                        func send(_ rest: ArraySlice<[UInt8]>) -> Bool {
                            guard let first = rest.first else { return connection.sendInLoop(gathering: pointers) }
                            return first.withUnsafeBytes { bytes in
                                pointers.append(bytes)
                                return send(rest.dropFirst())
                            }
                        }
                        #expect(send(pieces[...]))
                    }
                    connection.close()
                }))
            let port = try server.start().port
            defer { server.shutdown(timeout: .seconds(2)) }
            return try body(port)
        }
    }

    @Test("pieces of every size, empty ones among them, arrive whole and in order, past a full socket",
          arguments: PollerKind.allCases)
    func piecesArriveInOrder(poller: PollerKind) throws {
        // 700 pieces (more than one writev's 512), 0 to 20,000 bytes, 8 MB in all: the socket fills, the rest is
        // queued mid-piece and flushed in order.
        let pieces = (0..<700).map { i in randomBytes(i % 7 == 0 ? 0 : (i * 7919) % 20_000) }
        let expected = Array(pieces.joined())
        try withGatherServer(poller: poller, pieces: pieces, repeats: 1) { port in
            let client = try BlockingSocket(port: port, receiveTimeout: 20)
            defer { client.close() }
            usleep(200_000)  // let the server's socket fill before reading
            let received = try client.receiveUntilClose()
            #expect(received.count == expected.count)
            #expect(received == expected)
        }
    }

    @Test("a gather write of nothing, or of empty pieces, sends nothing and succeeds")
    func emptyPieces() throws {
        try withGatherServer(poller: .epoll, pieces: [[], [], []], repeats: 2) { port in
            let client = try BlockingSocket(port: port, receiveTimeout: 10)
            defer { client.close() }
            #expect(try client.receiveUntilClose().isEmpty)
        }
    }
}
