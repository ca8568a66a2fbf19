import Dispatch
import Foundation
import Reactor
import Synchronization
import Testing
import TestSupport

#if canImport(Glibc)
import Glibc
#endif

enum CloseKind: String, CaseIterable, Sendable {
    case fin, reset
}

@Suite("Connection lifecycle", .serialized)
struct LifecycleTests {
    @Test("a client that closes or resets mid-transfer: one close hook, descriptors back, no CPU afterwards",
          arguments: PollerKind.allCases, CloseKind.allCases)
    func closeMidTransfer(poller: PollerKind, kind: CloseKind) throws {
        let connects = EventCounter()
        let closes = EventCounter()
        let closedIDs = Shared<[UInt64]>([])
        try withEchoServer(
            poller: poller, ioLoops: 1,
            onConnect: { _ in connects.signal() },
            onClose: { c in
                closedIDs.update { $0.append(c.id) }
                closes.signal()
            }
        ) { server, port in
            // The server's sockets only (listener + accepted): other suites open and close descriptors in parallel.
            let descriptorsBefore = openSocketCount(localPort: port)
            let client = try BlockingSocket(port: port)
            #expect(connects.wait(for: 1))
            #expect(openSocketCount(localPort: port) == descriptorsBefore + 1)
            // Push a megabyte and read only part of the echo, so the server has output queued when we go.
            let writer = Thread { try? client.sendAll(randomBytes(1 << 20)) }
            writer.start()
            _ = try client.receive(exactly: 100_000)
            switch kind {
            case .fin: client.close()
            case .reset: client.reset()
            }
            #expect(closes.wait(for: 1))
            #expect(server.connectionCount == 0)

            // Exactly one close hook, and the loop goes quiet: no wakeups, no CPU.
            let loop = server.group.ioLoops[0]
            let iterationsBefore = loop.iterations
            let cpuBefore = threadCPUTicks(tid: loop.kernelThreadID)
            usleep(300_000)  // an observation window: a spinning loop would wake thousands of times in it
            #expect(closes.count == 1)
            #expect(closedIDs.get().count == 1)
            #expect(loop.iterations - iterationsBefore <= 2)
            #expect(threadCPUTicks(tid: loop.kernelThreadID) - cpuBefore <= 2)
            #expect(openSocketCount(localPort: port) == descriptorsBefore)
        }
    }

    @Test("an idle connection holds no buffer; buffers return to the pool on close", arguments: PollerKind.allCases)
    func idleHoldsNoBuffer(poller: PollerKind) throws {
        let closes = EventCounter()
        try withEchoServer(poller: poller, ioLoops: 1, onClose: { _ in closes.signal() }) { server, port in
            let loop = server.group.ioLoops[0]
            let client = try BlockingSocket(port: port)
            client.setReceiveTimeout(seconds: 10)
            let payload = randomBytes(300_000)
            let writer = Thread { try? client.sendAll(payload) }
            writer.start()
            #expect(try client.receive(exactly: payload.count) == payload)
            let held = try onLoop(loop) { loop.bufferStatistics.outstandingBytes }
            #expect(held == 0)
            client.close()
            #expect(closes.wait(for: 1))
            #expect(try onLoop(loop) { loop.bufferStatistics.outstandingBytes } == 0)
        }
    }

    @Test("a slow reader: queued output stays under the high-water mark while it sends megabytes",
          arguments: PollerKind.allCases)
    func slowReader(poller: PollerKind) throws {
        let highWater = 256 * 1024
        let options = ConnectionOptions(highWaterMark: highWater, lowWaterMark: 64 * 1024)
        let connection = Shared<TCPConnection?>(nil)
        let peak = Shared<Int>(0)
        let closes = EventCounter()
        try withEchoServer(
            poller: poller, ioLoops: 1, connection: options,
            onConnect: { c in connection.set(c) },
            onClose: { c in
                peak.set(c.peakQueuedOutputBytes)
                closes.signal()
            }
        ) { server, port in
            let client = try BlockingSocket(port: port)
            client.setReceiveTimeout(seconds: 20)
            let payload = randomBytes(8 << 20)
            let sent = EventCounter()
            let writer = Thread {
                try? client.sendAll(payload)
                sent.signal()
            }
            writer.start()
            #expect(eventually { connection.get() != nil })
            let conn = connection.get()!
            // The client is not reading: the server must stop reading from it.
            #expect(try eventually { try onLoop(conn.loop) { conn.isReadingPaused } })
            let queued = try onLoop(conn.loop) { conn.queuedOutputBytes }
            #expect(queued <= highWater)
            #expect(queued > 0)
            // Now drain: everything comes back intact, and the writer finishes.
            let echoed = try client.receive(exactly: payload.count)
            #expect(echoed == payload)
            #expect(sent.wait(for: 1))
            client.close()
            #expect(closes.wait(for: 1))
            #expect(peak.get() <= highWater)
            #expect(peak.get() > 0)
        }
    }
}
