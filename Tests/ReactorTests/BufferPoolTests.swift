@testable import Reactor
import Testing

@Suite("BufferPool: size classes 4 KiB ... 8 MiB, reuse, the cap")
struct BufferPoolTests {
    /// Every power of two from 4 KiB to 8 MiB is a class.
    static let classSizes = (12...23).map { 1 << $0 }

    @Test("a request gets the smallest class that holds it, 64-byte aligned", arguments: classSizes)
    func sizeClasses(size: Int) throws {
        let pool = BufferPool(capBytes: 64 << 20, maxBufferBytes: 64 << 20)
        defer { pool.drain() }
        for request in [size / 2 + 1, size - 1, size] where request > 0 {
            let expected = max(4096, size)
            let chunk = try pool.allocate(minimumCapacity: request)
            #expect(chunk.capacity == (request <= 4096 ? 4096 : expected), "request \(request)")
            #expect(Int(bitPattern: chunk.base) % BufferPool.alignment == 0)
            pool.release(chunk)
        }
        let bigger = try pool.allocate(minimumCapacity: size + 1)
        #expect(bigger.capacity == (size == 1 << 23 ? (size + 1 + 65535) & ~65535 : size * 2))
        pool.release(bigger)
    }

    @Test("tiny requests (even 0 and 1 byte) get the 4 KiB class")
    func smallest() throws {
        let pool = BufferPool(capBytes: 1 << 20, maxBufferBytes: 1 << 20)
        defer { pool.drain() }
        for request in [0, 1, 100, 4096] {
            let chunk = try pool.allocate(minimumCapacity: request)
            #expect(chunk.capacity == 4096)
            pool.release(chunk)
        }
    }

    @Test("a released chunk is handed out again for its class, and the statistics follow", arguments: classSizes)
    func reuse(size: Int) throws {
        let pool = BufferPool(capBytes: 64 << 20, maxBufferBytes: 64 << 20)
        defer { pool.drain() }
        let a = try pool.allocate(minimumCapacity: size)
        #expect(pool.outstandingBytes == size)
        #expect(pool.pooledBytes == 0)
        pool.release(a)
        #expect(pool.outstandingBytes == 0)
        #expect(pool.pooledBytes == size)
        let b = try pool.allocate(minimumCapacity: size)
        #expect(b.base == a.base)
        #expect(pool.pooledBytes == 0)
        // Another class does not take it.
        pool.release(b)
        let other = try pool.allocate(minimumCapacity: size == 4096 ? 8192 : size / 2)
        #expect(other.base != b.base)
        #expect(pool.pooledBytes == size)
        pool.release(other)
    }

    @Test("the pool keeps at most capBytes for reuse; what is released beyond goes back to malloc")
    func cap() throws {
        let cap = 64 * 1024
        let pool = BufferPool(capBytes: cap, maxBufferBytes: 1 << 20)
        defer { pool.drain() }
        let chunks = try (0..<40).map { _ in try pool.allocate(minimumCapacity: 4096) }
        #expect(pool.outstandingBytes == 40 * 4096)
        for c in chunks { pool.release(c) }
        #expect(pool.outstandingBytes == 0)
        #expect(pool.pooledBytes == cap)  // 16 chunks kept, 24 freed
        // A chunk larger than what is left under the cap is not kept either.
        let big = try pool.allocate(minimumCapacity: 1 << 20)
        pool.release(big)
        #expect(pool.pooledBytes == cap)
        pool.drain()
        #expect(pool.pooledBytes == 0)
    }

    @Test("decay frees what no request needed since the last decay, keeps what a steady load reuses")
    func decay() throws {
        let pool = BufferPool(capBytes: 64 << 20, maxBufferBytes: 64 << 20)
        defer { pool.drain() }
        // A burst: 40 chunks of 64 KiB, all back in the pool.
        let burst = try (0..<40).map { _ in try pool.allocate(minimumCapacity: 64 << 10) }
        for c in burst { pool.release(c) }
        #expect(pool.pooledBytes == 40 << 16)
        #expect(pool.takeFreedBytes() == 0)
        // The first decay after the burst frees nothing: the low-water mark dates from before the chunks came back.
        pool.decay()
        // A steady load reuses 4 of them during the next interval.
        for _ in 0..<3 {
            let steady = try (0..<4).map { _ in try pool.allocate(minimumCapacity: 64 << 10) }
            for c in steady { pool.release(c) }
        }
        #expect(pool.decay() == 36 << 16)
        #expect(pool.pooledBytes == 4 << 16)
        #expect(pool.takeFreedBytes() == 36 << 16)
        // Nothing used in the next interval: the pool empties and has nothing more to do.
        #expect(pool.decay() == 4 << 16)
        #expect(pool.pooledBytes == 0)
        _ = pool.takeFreedBytes()
        #expect(!pool.needsMaintenance)
    }

    @Test("above 8 MiB: an exact, unpooled chunk (64 KiB multiple) up to maxBufferBytes; above it a clear error")
    func largeAndLimit() throws {
        let pool = BufferPool(capBytes: 64 << 20, maxBufferBytes: 16 << 20)
        defer { pool.drain() }
        let large = try pool.allocate(minimumCapacity: (8 << 20) + 1)
        #expect(large.capacity == (8 << 20) + 65536)
        pool.release(large)
        #expect(pool.pooledBytes == 0)  // not a class: freed, never pooled
        #expect(pool.outstandingBytes == 0)
        let atLimit = try pool.allocate(minimumCapacity: 16 << 20)
        pool.release(atLimit)
        #expect(throws: ReactorError.bufferLimitExceeded(requested: (16 << 20) + 1, limit: 16 << 20)) {
            try pool.allocate(minimumCapacity: (16 << 20) + 1)
        }
        #expect(pool.outstandingBytes == 0)
    }

    @Test("class index: ceil(log2(size)) - 12, clamped at 0", arguments: [
        (1, 0), (4096, 0), (4097, 1), (8192, 1), (8193, 2), (1 << 20, 8), (1 << 23, 11),
    ])
    func classIndex(size: Int, index: Int) {
        #expect(BufferPool.classIndex(for: size) == index)
    }
}
