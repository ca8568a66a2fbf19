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

/// One wake-up reports, in this order: data on B, whose handler closes A; a pending connection C, accepted on the
/// same loop (`ioLoops: 0`), which takes the number A just freed; and A's reset. That reset belongs to A and must
/// not close C. Runs in a child process, where no other test takes the freed number first. epoll only: it reports
/// in the order the events happened, while poll and select report in registration or descriptor order, where the
/// listener comes before the connections and this sequence cannot be lined up from outside.
@Suite("Descriptor numbers reused within one wake-up")
struct ReusedNumberTests {
    @Test("an event of a connection closed earlier in the same wake-up never reaches the socket that took its number")
    func staleEventSkipped() async {
        await #expect(processExitsWith: .success) {
            try staleEventScenario()
        }
    }
}

/// Opens /dev/null on every free descriptor number below the highest one in use, so the next numbers handed out
/// are predictable (the lowest free one is always the one just closed).
private func fillDescriptorGaps() -> [Int32] {
    let open = Set((try? FileManager.default.contentsOfDirectory(atPath: "/proc/self/fd"))?.compactMap { Int32($0) } ?? [])
    guard let highest = open.max() else { return [] }
    var fillers: [Int32] = []
    for n in 0..<highest where !open.contains(n) {
        let fd = Glibc.open("/dev/null", O_RDONLY | O_CLOEXEC)
        if fd >= 0 { fillers.append(fd) }
    }
    return fillers
}

private func staleEventScenario() throws {
    let group = try EventLoopGroup(ioLoops: 0, configuration: LoopConfiguration(poller: .epoll))
    defer { group.shutdown() }
    let opened = Shared<[TCPConnection]>([])
    let connects = EventCounter()
    let closedIDs = Shared<[UInt64]>([])
    let server = TCPServer(
        group: group, configuration: ServerConfiguration(port: 0),
        callbacks: ConnectionCallbacks(
            onConnect: { c in
                opened.update { $0.append(c) }
                connects.signal()
            },
            onData: { c, bytes in
                let data = bytes.consumeAll()
                if Array(data) == Array("close A".utf8) {
                    opened.get()[0].forceClose()
                } else {
                    c.sendInLoop(data)
                }
            },
            onClose: { c in closedIDs.update { $0.append(c.id) } }))
    let port = try server.start().port
    defer { server.shutdown(timeout: .seconds(2)) }

    let fillers = fillDescriptorGaps()
    defer { for f in fillers { close(f) } }
    let a = try BlockingSocket(port: port, receiveTimeout: 10)
    #expect(connects.wait(for: 1))
    let b = try BlockingSocket(port: port, receiveTimeout: 10)
    defer { b.close() }
    #expect(connects.wait(for: 2))
    try b.sendAll(Array("x".utf8))
    #expect(try b.receive(exactly: 1) == Array("x".utf8))
    let aID = opened.get()[0].id

    // Hold the loop while the three events line up on its ready list.
    let lined = DispatchSemaphore(value: 0)
    let holding = DispatchSemaphore(value: 0)
    group.acceptorLoop.execute {
        holding.signal()
        _ = lined.wait(timeout: .now() + 10)
    }
    holding.wait()
    try b.sendAll(Array("close A".utf8))
    usleep(20_000)  // readiness order is the order of the events: B, then the listener, then A
    let c = try BlockingSocket(port: port, receiveTimeout: 10)
    defer { c.close() }
    usleep(20_000)
    a.reset()
    let refill = Glibc.open("/dev/null", O_RDONLY | O_CLOEXEC)  // takes the number A's client side freed
    defer { close(refill) }
    usleep(20_000)  // the loop is held: there is no event to await, only loopback delivery to let finish
    lined.signal()

    #expect(connects.wait(for: 3))
    #expect(eventually { closedIDs.get() == [aID] })
    // C is served: A's reset did not reach it.
    try c.sendAll(Array("hello".utf8))
    #expect(try c.receive(exactly: 5) == Array("hello".utf8))
    #expect(closedIDs.get() == [aID])
}
