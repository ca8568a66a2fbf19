#if canImport(Glibc)
import Glibc
#endif
import DequeModule

/// Bytes accepted for sending that the socket has not taken yet: a queue of pooled chunks, written with writev.
/// Empty most of the time (writes go straight to the socket when nothing is queued). Loop thread only.
///
/// ```
///  chunk 0                      chunk 1              ...   last chunk
///  | sent | unsent      |       | unsent            |       | unsent    | free     |
///         ^start        ^end                                             ^end      ^capacity
/// ```
struct OutputQueue {
    struct Piece {
        var chunk: Chunk
        var start: Int
        var end: Int
    }

    private var pieces = Deque<Piece>()
    private(set) var bytes = 0
    /// Pieces per writev (the iovec array lives on the stack); far below IOV_MAX (1024).
    static let maxIOVecs = 16
    /// Largest chunk taken for a single append; bigger remainders span several chunks.
    static let appendChunkBytes = 1 << 20

    var isEmpty: Bool { bytes == 0 }

    mutating func append(_ src: UnsafeRawBufferPointer, pool: BufferPool) throws {
        var offset = 0
        let total = src.count
        if total == 0 { return }
        if var last = pieces.last, last.end < last.chunk.capacity {
            let n = min(last.chunk.capacity - last.end, total)
            (last.chunk.base + last.end).copyMemory(from: src.baseAddress!, byteCount: n)
            last.end += n
            pieces[pieces.count - 1] = last
            offset = n
        }
        while offset < total {
            let want = min(total - offset, Self.appendChunkBytes)
            let chunk = try pool.allocate(minimumCapacity: want)
            let n = min(chunk.capacity, total - offset)
            chunk.base.copyMemory(from: src.baseAddress! + offset, byteCount: n)
            pieces.append(Piece(chunk: chunk, start: 0, end: n))
            offset += n
        }
        bytes += total
    }

    /// Writes as much as the socket `fd` takes. Returns the bytes written; throws on a socket error.
    @inline(__always)
    mutating func flush(fd: Int32, pool: BufferPool) throws(IOError) -> Int {
        try flush(
            pool: pool,
            write: { (base, count) throws(IOError) in try Posix.write(fd, base, count) },
            writev: { (iov, count) throws(IOError) in try Posix.writev(fd, iov, count) })
    }

    /// Writes as much as `write` and `writev` take (a socket's calls, or a test's): one piece with `write`, up to
    /// `maxIOVecs` with `writev`, and again while each call takes all it was given. Returns the bytes written;
    /// written pieces go back to `pool`. Stops at `.wouldBlock` or a short write (the socket buffer is full); an error
    /// is rethrown, with what was written before it already consumed.
    @inline(__always)
    mutating func flush(
        pool: BufferPool,
        write: (UnsafeRawPointer, Int) throws(IOError) -> IOResult<Int>,
        writev: (UnsafePointer<iovec>, Int32) throws(IOError) -> IOResult<Int>
    ) throws(IOError) -> Int {
        var written = 0
        while bytes > 0 {
            let r: IOResult<Int>
            var requested = 0
            if pieces.count == 1 {
                let p = pieces[0]
                requested = p.end - p.start
                r = try write(p.chunk.base + p.start, requested)
            } else {
                var iov = (
                    iovec(), iovec(), iovec(), iovec(), iovec(), iovec(), iovec(), iovec(),
                    iovec(), iovec(), iovec(), iovec(), iovec(), iovec(), iovec(), iovec()
                )
                let count = min(pieces.count, Self.maxIOVecs)
                r = try withUnsafeMutableBytes(of: &iov) { (raw) throws(IOError) -> IOResult<Int> in
                    let v = raw.bindMemory(to: iovec.self)
                    for i in 0..<count {
                        let p = pieces[i]
                        v[i] = iovec(iov_base: p.chunk.base + p.start, iov_len: p.end - p.start)
                        requested += p.end - p.start
                    }
                    return try writev(v.baseAddress!, Int32(count))
                }
            }
            guard case .processed(let n) = r else { break }
            written += n
            consume(n, pool: pool)
            // A short write means the socket buffer is full: trying again now would only return EAGAIN.
            if n < requested { break }
        }
        return written
    }

    private mutating func consume(_ n: Int, pool: BufferPool) {
        var left = n
        bytes -= n
        while left > 0 {
            let p = pieces[0]
            let avail = p.end - p.start
            if left >= avail {
                left -= avail
                pool.release(p.chunk)
                pieces.removeFirst()
            } else {
                pieces[0].start += left
                left = 0
            }
        }
        // A large sole piece that is mostly sent: keep only what is left, in a smaller chunk.
        if pieces.count == 1, pieces[0].chunk.capacity > BufferPool.shrinkAboveBytes {
            let p = pieces[0]
            let live = p.end - p.start
            if live <= p.chunk.capacity / 4, let smaller = try? pool.allocate(minimumCapacity: max(live * 2, 4096)) {
                smaller.base.copyMemory(from: p.chunk.base + p.start, byteCount: live)
                pool.release(p.chunk)
                pieces[0] = Piece(chunk: smaller, start: 0, end: live)
            }
        }
    }

    /// Bytes of the chunks the queue holds (at least `bytes`).
    var capacityBytes: Int { pieces.reduce(0) { $0 + $1.chunk.capacity } }

    mutating func releaseAll(pool: BufferPool) {
        for p in pieces { pool.release(p.chunk) }
        pieces.removeAll()
        bytes = 0
    }
}
