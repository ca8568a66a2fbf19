@testable import Reactor
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// A socket for `OutputQueue.flush`: each call takes what its script says, and the bytes it took are kept in order.
private final class FakeSocket {
    enum Step: Sendable {
        /// Take everything offered.
        case all
        /// Take at most this many bytes.
        case upTo(Int)
        /// EAGAIN: take nothing.
        case wouldBlock
        /// Fail with this errno.
        case fail(Int32)
    }

    var script: [Step]
    /// Used once the script is exhausted.
    var then: Step
    var taken: [UInt8] = []
    var writeCalls = 0
    var writevCalls = 0
    var largestIOVCount = 0

    init(_ script: [Step] = [], then: Step = .all) {
        self.script = script
        self.then = then
    }

    private func nextStep() -> Step { script.isEmpty ? then : script.removeFirst() }

    /// Takes from `pieces` (in order) what the next step allows.
    private func take(_ pieces: [UnsafeRawBufferPointer], call: StaticString) throws(IOError) -> IOResult<Int> {
        let offered = pieces.reduce(0) { $0 + $1.count }
        var limit: Int
        switch nextStep() {
        case .all: limit = offered
        case .upTo(let n): limit = min(n, offered)
        case .wouldBlock: return .wouldBlock
        case .fail(let e): throw IOError(errnoCode: e, call: "\(call)")
        }
        let n = limit
        for piece in pieces where limit > 0 {
            let k = min(limit, piece.count)
            taken.append(contentsOf: piece.prefix(k))
            limit -= k
        }
        return .processed(n)
    }

    func write(_ base: UnsafeRawPointer, _ count: Int) throws(IOError) -> IOResult<Int> {
        writeCalls += 1
        return try take([UnsafeRawBufferPointer(start: base, count: count)], call: "write")
    }

    func writev(_ iov: UnsafePointer<iovec>, _ count: Int32) throws(IOError) -> IOResult<Int> {
        writevCalls += 1
        largestIOVCount = max(largestIOVCount, Int(count))
        let pieces = (0..<Int(count)).map { UnsafeRawBufferPointer(start: iov[$0].iov_base, count: iov[$0].iov_len) }
        return try take(pieces, call: "writev")
    }
}

extension OutputQueue {
    /// Flushes into `socket`.
    fileprivate mutating func flush(into socket: FakeSocket, pool: BufferPool) throws(IOError) -> Int {
        try flush(
            pool: pool,
            write: { (base, count) throws(IOError) in try socket.write(base, count) },
            writev: { (iov, count) throws(IOError) in try socket.writev(iov, count) })
    }

    /// Appends `bytes` in pieces of `pieceSize`.
    fileprivate mutating func append(_ bytes: [UInt8], inPiecesOf pieceSize: Int, pool: BufferPool) throws {
        var offset = 0
        while offset < bytes.count {
            let end = min(bytes.count, offset + pieceSize)
            try bytes[offset..<end].withUnsafeBytes { try append($0, pool: pool) }
            offset = end
        }
    }
}

private func pattern(_ n: Int, seed: Int = 0) -> [UInt8] { (0..<n).map { UInt8(truncatingIfNeeded: $0 &* 31 &+ seed) } }

/// Linux's IOV_MAX (limits.h; not imported into Swift): the most iovecs one writev may take.
private let iovMax = 1024

private func makePool() -> BufferPool { BufferPool(capBytes: 64 << 20, maxBufferBytes: 64 << 20) }

@Suite("OutputQueue: flushing through injected write and writev, no sockets")
struct OutputQueueTests {
    @Test("a queue the socket takes at once is written whole, in order, and its chunks go back to the pool",
          arguments: [1, 4096, 4097, 100_000, 3 << 20])
    func writesEverything(size: Int) throws {
        let pool = makePool()
        var queue = OutputQueue()
        let data = pattern(size)
        try data.withUnsafeBytes { try queue.append($0, pool: pool) }
        #expect(queue.bytes == size)
        let socket = FakeSocket()
        let written = try queue.flush(into: socket, pool: pool)
        #expect(written == size)
        #expect(socket.taken == data)
        #expect(queue.isEmpty)
        #expect(pool.outstandingBytes == 0)
        // One chunk: a plain write; several: writev.
        #expect(size <= OutputQueue.appendChunkBytes ? socket.writevCalls == 0 : socket.writeCalls == 0)
    }

    @Test("a large piece that is mostly sent no longer holds its capacity: the rest moves to a smaller chunk")
    func mostlyDrainedPieceShrinks() throws {
        let pool = makePool()
        var queue = OutputQueue()
        let data = pattern(1 << 20)
        try data.withUnsafeBytes { try queue.append($0, pool: pool) }
        #expect(queue.capacityBytes == 1 << 20)
        // The socket takes all but the last 1000 bytes.
        let socket = FakeSocket([.upTo((1 << 20) - 1000)], then: .wouldBlock)
        #expect(try queue.flush(into: socket, pool: pool) == (1 << 20) - 1000)
        #expect(queue.bytes == 1000)
        #expect(queue.capacityBytes <= 4096, "a drained 1 MiB piece kept \(queue.capacityBytes) bytes")
        #expect(pool.outstandingBytes == queue.capacityBytes)
        // The rest still goes out whole and in order.
        socket.then = .all
        #expect(try queue.flush(into: socket, pool: pool) == 1000)
        #expect(socket.taken == data)
        #expect(pool.outstandingBytes == 0)
    }

    @Test("short writes stop the flush; the next flush goes on from the exact byte, nothing lost or repeated",
          arguments: [1, 7, 4095, 4096, 4097, 65_536])
    func partialWrites(shortBy take: Int) throws {
        let pool = makePool()
        var queue = OutputQueue()
        let data = pattern(200_000, seed: take)
        try queue.append(data, inPiecesOf: 30_000, pool: pool)
        let socket = FakeSocket([], then: .upTo(take))
        var flushes = 0
        while !queue.isEmpty {
            let before = queue.bytes
            let written = try queue.flush(into: socket, pool: pool)
            // A short write ends the flush at once: no second call that could only meet EAGAIN.
            #expect(written == min(take, before))
            #expect(queue.bytes == before - written)
            flushes += 1
            if flushes > 200_000 { break }
        }
        #expect(socket.taken == data)
        #expect(pool.outstandingBytes == 0)
    }

    @Test("EAGAIN writes nothing and keeps every byte queued")
    func wouldBlock() throws {
        let pool = makePool()
        var queue = OutputQueue()
        let data = pattern(10_000)
        try queue.append(data, inPiecesOf: 10_000, pool: pool)
        let socket = FakeSocket([.wouldBlock])
        #expect(try queue.flush(into: socket, pool: pool) == 0)
        #expect(queue.bytes == data.count)
        #expect(socket.taken.isEmpty)
        #expect(try queue.flush(into: socket, pool: pool) == data.count)
        #expect(socket.taken == data)
    }

    @Test("EAGAIN after some full writes: what was written is consumed, the rest stays for the next flush")
    func wouldBlockAfterProgress() throws {
        let pool = makePool()
        var queue = OutputQueue()
        // 40 chunks of 4 KiB: three full writevs of 16, 16 and 8 pieces if nothing blocks.
        let data = pattern(40 * 4096)
        try queue.append(data, inPiecesOf: 4096, pool: pool)
        let socket = FakeSocket([.all, .wouldBlock])
        let first = try queue.flush(into: socket, pool: pool)
        #expect(first == OutputQueue.maxIOVecs * 4096)
        #expect(queue.bytes == data.count - first)
        #expect(try queue.flush(into: socket, pool: pool) == data.count - first)
        #expect(socket.taken == data)
    }

    @Test("more chunks than IOV_MAX: every writev gets at most maxIOVecs pieces, and all bytes go out in order")
    func beyondIOVMax() throws {
        let pool = makePool()
        var queue = OutputQueue()
        let chunks = iovMax + 100
        let data = pattern(chunks * 4096, seed: 3)
        try queue.append(data, inPiecesOf: 4096, pool: pool)
        let socket = FakeSocket()
        #expect(try queue.flush(into: socket, pool: pool) == data.count)
        #expect(socket.taken == data)
        #expect(socket.largestIOVCount == OutputQueue.maxIOVecs)
        #expect(socket.largestIOVCount <= iovMax)
        // Full batches, then the rest: one call per maxIOVecs pieces (a last lone piece with a plain write).
        #expect(socket.writevCalls + socket.writeCalls == (chunks + OutputQueue.maxIOVecs - 1) / OutputQueue.maxIOVecs)
        #expect(pool.outstandingBytes == 0)
    }

    @Test("a write error is thrown with its errno; what was written before it is consumed, the rest kept",
          arguments: [EPIPE, ECONNRESET, ENOBUFS])
    func errors(errnoCode: Int32) throws {
        let pool = makePool()
        var queue = OutputQueue()
        let data = pattern(20 * 4096)
        try queue.append(data, inPiecesOf: 4096, pool: pool)
        let socket = FakeSocket([.all, .fail(errnoCode)])
        #expect(throws: IOError(errnoCode: errnoCode, call: "writev")) { try queue.flush(into: socket, pool: pool) }
        #expect(socket.taken == Array(data.prefix(OutputQueue.maxIOVecs * 4096)))
        #expect(queue.bytes == data.count - OutputQueue.maxIOVecs * 4096)
        queue.releaseAll(pool: pool)
        #expect(queue.isEmpty)
        #expect(pool.outstandingBytes == 0)
    }

    @Test("a write error on a single piece comes from write, not writev")
    func errorOnSinglePiece() throws {
        let pool = makePool()
        var queue = OutputQueue()
        try pattern(100).withUnsafeBytes { try queue.append($0, pool: pool) }
        let socket = FakeSocket([.fail(EPIPE)])
        #expect(throws: IOError(errnoCode: EPIPE, call: "write")) { try queue.flush(into: socket, pool: pool) }
        #expect(queue.bytes == 100)
        queue.releaseAll(pool: pool)
    }

    @Test("appends after a partial flush land behind the unsent bytes, filling the last chunk first")
    func appendAfterPartialFlush() throws {
        let pool = makePool()
        var queue = OutputQueue()
        let first = pattern(3000, seed: 1)
        let second = pattern(3000, seed: 2)
        try first.withUnsafeBytes { try queue.append($0, pool: pool) }
        let socket = FakeSocket([.upTo(1000)])
        #expect(try queue.flush(into: socket, pool: pool) == 1000)
        try second.withUnsafeBytes { try queue.append($0, pool: pool) }
        #expect(queue.bytes == 5000)
        #expect(try queue.flush(into: socket, pool: pool) == 5000)
        #expect(socket.taken == first + second)
        #expect(pool.outstandingBytes == 0)
    }
}
