#if canImport(Glibc)
import Glibc
#endif
import CSwitchyardLinux
import DequeModule
import Synchronization

/// Bytes written once and sent to many sockets: an append-only file in memory (a memfd) that connections send from
/// with ``TCPConnection/sendFileInLoop(_:offset:count:)``, so the kernel references its pages instead of copying
/// the bytes once per socket (the media relay's shared chunks: one copy into the file per chunk, none per viewer).
///
/// Each append returns a ``Region`` that keeps its bytes. Bytes given out are never written over (appends go at the
/// end), and once every region before a point is gone, the whole pages before it are given back (hole punching: a
/// page a socket still sends from stays alive with its bytes, it is only no longer the file's). So the file holds
/// the bytes from its oldest live region on (rounded to pages, given back `punchGranularity` at a time), and the
/// sockets' send queues what they have not sent. Thread-safe: appends and releases may happen on any thread.
public final class BroadcastFile: Sendable {
    /// The bytes of one append, kept while this object lives. Send them with `file.descriptor`, `offset`, `count`.
    public final class Region: Sendable {
        public let file: BroadcastFile
        /// Where the bytes start in the file.
        public let offset: Int64
        public let count: Int
        fileprivate let index: UInt64

        fileprivate init(file: BroadcastFile, offset: Int64, count: Int, index: UInt64) {
            self.file = file
            self.offset = offset
            self.count = count
            self.index = index
        }

        /// Where the bytes end in the file.
        public var end: Int64 { offset + Int64(count) }

        deinit { file.release(index) }
    }

    /// The memfd. Valid while the file lives (each region keeps it alive).
    public let descriptor: Int32
    private let punchGranularity: Int64
    private let pageMask: Int64
    private let onResidentChange: (@Sendable (Int64) -> Void)?

    private struct State {
        /// End of the bytes appended.
        var end: Int64 = 0
        /// Index of the next append, and of `live.first`.
        var nextIndex: UInt64 = 0
        var firstLive: UInt64 = 0
        /// Every append from the oldest live one on, in order: where it ends and whether its region is gone.
        var live: Deque<(end: Int64, released: Bool)> = []
        /// Every byte before this belongs to regions that are gone.
        var releasedEnd: Int64 = 0
        /// The pages before this were given back.
        var punchedEnd: Int64 = 0
    }

    private let state = Mutex(State())

    /// Makes the file (memfd_create; `name` shows in /proc/PID/fd). `punchGranularity`: pages are given back once
    /// at least this many bytes of them are free (default 256 KiB), so a stream of small regions costs a
    /// fallocate per that many bytes. `onResidentChange` is told every change of ``residentBytes`` (appends,
    /// pages given back, the file closing), on the thread that made it: for a gauge of the memory in such files.
    public init(name: String, punchGranularity: Int = 256 << 10,
                onResidentChange: (@Sendable (Int64) -> Void)? = nil) throws(IOError) {
        let fd = sy_memfd(name)
        guard fd >= 0 else { throw IOError(errnoCode: errno, call: "memfd_create") }
        descriptor = fd
        self.punchGranularity = Int64(max(punchGranularity, 1))
        let page = Int64(sysconf(Int32(_SC_PAGESIZE)))
        pageMask = ~(max(page, 4096) - 1)
        self.onResidentChange = onResidentChange
    }

    deinit {
        Posix.close(descriptor)
        if let onResidentChange {
            let resident = residentBytes
            if resident != 0 { onResidentChange(-resident) }
        }
    }

    /// Appends `bytes` at the end of the file (one copy, by pwrite) and returns the region that keeps them.
    /// Throws when the file cannot grow (ENOSPC, ENOMEM).
    public func append(_ bytes: UnsafeRawBufferPointer) throws(IOError) -> Region {
        try append(contentsOf: [bytes])
    }

    /// Appends the pieces one after the other (framing and the bytes it frames, with no copy into one buffer) and
    /// returns the one region that keeps them all.
    public func append(contentsOf pieces: [UnsafeRawBufferPointer]) throws(IOError) -> Region {
        let count = pieces.reduce(0) { $0 + $1.count }
        let (offset, index) = state.withLock { state -> (Int64, UInt64) in
            let offset = state.end
            state.end += Int64(count)
            let index = state.nextIndex
            state.nextIndex += 1
            state.live.append((end: state.end, released: false))
            return (offset, index)
        }
        // The bytes count as the file's from here (its end moved past them), written or not.
        onResidentChange?(Int64(count))
        var at = offset
        for piece in pieces where piece.count > 0 {
            if sy_pwrite_all(descriptor, piece.baseAddress, piece.count, at) != 0 {
                let code = errno
                release(index)
                throw IOError(errnoCode: code, call: "pwrite")
            }
            at += Int64(piece.count)
        }
        return Region(file: self, offset: offset, count: count, index: index)
    }

    /// Bytes appended since the file was made.
    public var bytesAppended: Int64 { state.withLock { $0.end } }

    /// Bytes of the file not given back yet (from the first page not punched to the end).
    public var residentBytes: Int64 { state.withLock { $0.end - $0.punchedEnd } }

    private func release(_ index: UInt64) {
        let punch = state.withLock { state -> (Int64, Int64)? in
            state.live[Int(index - state.firstLive)].released = true
            while let first = state.live.first, first.released {
                state.releasedEnd = first.end
                state.live.removeFirst()
                state.firstLive += 1
            }
            let target = state.releasedEnd & pageMask
            guard target - state.punchedEnd >= punchGranularity else { return nil }
            defer { state.punchedEnd = target }
            return (state.punchedEnd, target - state.punchedEnd)
        }
        // Whole pages before every live region: no region reads them again. A failure (a kernel without hole
        // punching for memfds) only keeps the pages until the file closes.
        if let (offset, length) = punch {
            _ = sy_punch_hole(descriptor, offset, length)
            onResidentChange?(-length)
        }
    }
}
