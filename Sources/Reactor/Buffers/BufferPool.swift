/// A block of raw memory handed out by a `BufferPool`.
struct Chunk {
    let base: UnsafeMutableRawPointer
    let capacity: Int
}

/// A per-loop pool of size-classed chunks: 4 KiB, 8 KiB, ... 8 MiB (powers of two). Loop thread only, so the
/// fast path takes no lock.
///
/// Released chunks are kept on a free list of their class while the pool holds less than `capBytes`; beyond the
/// cap they go back to malloc. What the free lists keep decays: `decay()` (the loop calls it every
/// `LoopConfiguration.poolDecayInterval` while the pool holds anything) frees the chunks of each class that no
/// request needed since the previous call, so after a burst the pool empties within two intervals, while a steady
/// load keeps what it reuses. Requests above 8 MiB get an exact, unpooled allocation up to `maxBufferBytes`; above
/// that, `ReactorError.bufferLimitExceeded`. `freedBytes` counts what went back to malloc (the loop asks the
/// allocator to return it to the system once enough has).
final class BufferPool {
    static let minShift = 12  // 4 KiB
    static let maxShift = 23  // 8 MiB
    static let classCount = maxShift - minShift + 1
    static let largestPooled = 1 << maxShift
    /// Chunks start on a cache line: the kernel's copy to and from user memory (`rep movsb`) runs several times
    /// slower into a destination that is only 16-byte aligned (measured: 55% of an echo server's CPU in
    /// `_copy_to_iter` with 64 KiB messages, 8% once aligned).
    static let alignment = 64
    /// A connection's buffer (input tail or output piece) larger than this is not kept once it is mostly drained: when
    /// what is left fits in a quarter of it, the rest moves to a smaller chunk and the big one goes back. A peer that
    /// once sent or was sent a large message then holds no more than its live bytes need.
    static let shrinkAboveBytes = 64 * 1024

    // @exclusivity(unchecked): the pool belongs to one loop and its methods call nothing that comes back to it.
    @exclusivity(unchecked) private var free: [[UnsafeMutableRawPointer]]
    /// Per class, the fewest chunks its free list held since the last `decay()`: chunks no request needed.
    @exclusivity(unchecked) private var unusedCounts: [Int]
    @exclusivity(unchecked) private(set) var pooledBytes = 0
    /// Bytes currently handed out (for statistics and tests).
    @exclusivity(unchecked) private(set) var outstandingBytes = 0
    /// Bytes given back to malloc (released beyond the cap, unpooled, or decayed) since `takeFreedBytes()`.
    @exclusivity(unchecked) private(set) var freedBytes = 0
    let capBytes: Int
    let maxBufferBytes: Int

    init(capBytes: Int, maxBufferBytes: Int) {
        self.capBytes = capBytes
        self.maxBufferBytes = max(maxBufferBytes, 1 << Self.minShift)
        free = Array(repeating: [], count: Self.classCount)
        unusedCounts = Array(repeating: 0, count: Self.classCount)
    }

    @inline(__always)
    static func classIndex(for size: Int) -> Int {
        if size <= (1 << minShift) { return 0 }
        let bits = Int.bitWidth - (size - 1).leadingZeroBitCount  // ceil(log2(size))
        return bits - minShift
    }

    /// A chunk of at least `minimumCapacity` bytes.
    func allocate(minimumCapacity: Int) throws -> Chunk {
        if minimumCapacity > maxBufferBytes {
            throw ReactorError.bufferLimitExceeded(requested: minimumCapacity, limit: maxBufferBytes)
        }
        if minimumCapacity > Self.largestPooled {
            let size = (minimumCapacity + 65535) & ~65535
            outstandingBytes += size
            return Chunk(base: .allocate(byteCount: size, alignment: BufferPool.alignment), capacity: size)
        }
        let c = Self.classIndex(for: minimumCapacity)
        let size = 1 << (c + Self.minShift)
        outstandingBytes += size
        if let p = free[c].popLast() {
            pooledBytes -= size
            if free[c].count < unusedCounts[c] { unusedCounts[c] = free[c].count }
            return Chunk(base: p, capacity: size)
        }
        return Chunk(base: .allocate(byteCount: size, alignment: BufferPool.alignment), capacity: size)
    }

    func release(_ chunk: Chunk) {
        outstandingBytes -= chunk.capacity
        let size = chunk.capacity
        if size <= Self.largestPooled && size.nonzeroBitCount == 1 && pooledBytes + size <= capBytes {
            free[Self.classIndex(for: size)].append(chunk.base)
            pooledBytes += size
        } else {
            chunk.base.deallocate()
            freedBytes += size
        }
    }

    /// True while the pool keeps chunks or has freed bytes nobody has taken yet: the loop's maintenance timer runs.
    var needsMaintenance: Bool { pooledBytes > 0 || freedBytes > 0 }

    /// Frees the pooled chunks that no request needed since the previous call (per class, the fewest its free list
    /// held meanwhile); returns the bytes freed.
    @discardableResult
    func decay() -> Int {
        var released = 0
        for c in 0..<free.count {
            let size = 1 << (c + Self.minShift)
            for _ in 0..<min(unusedCounts[c], free[c].count) {
                free[c].removeLast().deallocate()
                released += size
            }
            unusedCounts[c] = free[c].count
        }
        pooledBytes -= released
        freedBytes += released
        return released
    }

    /// The bytes freed since the previous call, and zero from now on.
    func takeFreedBytes() -> Int {
        defer { freedBytes = 0 }
        return freedBytes
    }

    /// A pool given up without `drain()` (a loop's pool is drained when the loop stops; a pool made for one job, as in
    /// the tests, is just dropped) frees what it holds. Chunks still handed out belong to their holders.
    deinit { drain() }

    /// Frees every pooled chunk.
    func drain() {
        for c in 0..<free.count {
            for p in free[c] { p.deallocate() }
            free[c].removeAll()
            unusedCounts[c] = 0
        }
        pooledBytes = 0
    }
}
