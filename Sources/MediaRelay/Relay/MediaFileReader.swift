#if canImport(Glibc)
import Glibc
#endif
import Dispatch
import Synchronization

/// A media file open for sending: HTTP viewers of a file's playback are sent their chunks by sendfile from the file
/// itself (its page cache, which the reader has just filled), not from a copy. Closed when the last chunk that names
/// it is gone. A file changed under a playback sends what it holds now; a viewer that cannot be sent its bytes
/// (the file was cut short) stops draining and is closed at the stuck timeout.
final class MediaSourceFile: SendFileSource {
    let descriptor: Int32

    /// Takes ownership of `descriptor`.
    init(descriptor: Int32) {
        self.descriptor = descriptor
    }

    deinit {
        Glibc.close(descriptor)
    }
}

/// Reads one media file sequentially, off the loops (a serial queue of its own), and cuts it into chunks: the
/// playback asks for the next piece when its read-ahead runs low and gets the chunks back on its loop. The file is
/// read once per playback, whatever the number of viewers.
final class MediaFileReader: Sendable {
    /// What one read gave.
    struct Piece: Sendable {
        var chunks: [MediaChunk]
        /// The file is read to its end (the chunks include the last one).
        var atEnd: Bool
        /// Why the stream cannot go on (a read error, or bytes that are not a transport stream with a clock).
        var failure: String?
    }

    private struct State {
        var fd: Int32
        var chunker = TSChunker()
        var seek: SeekFilter?
        var done = false
    }

    let path: String
    let readSize: Int
    /// The file again, for sending its chunks (nil when it could not be opened twice: the chunks are copied).
    let sourceFile: MediaSourceFile?
    private let queue: DispatchQueue
    private let state: Mutex<State>
    private let bytesReadCounter = Atomic<Int>(0)

    /// Opens `path`; throws a description when it cannot be opened. `start`: media time from the beginning at
    /// which to start, the playback beginning at the keyframe at or before it (nil: the beginning).
    init(path: String, start: Duration? = nil, readSize: Int = 256 << 10) throws(RelayError) {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { throw .badMedia("cannot open \(path): \(String(cString: strerror(errno)))") }
        self.path = path
        self.readSize = readSize
        let again = dup(fd)
        sourceFile = again >= 0 ? MediaSourceFile(descriptor: again) : nil
        queue = DispatchQueue(label: "switchyard.relay.reader")
        state = Mutex(State(fd: fd, seek: start.map { SeekFilter(start: PlaybackPacer.ticks($0)) }))
    }

    deinit {
        state.withLock { if $0.fd >= 0 { Glibc.close($0.fd) } }
    }

    /// Bytes read from the file so far.
    var bytesRead: Int { bytesReadCounter.load(ordering: .relaxed) }

    /// Reads the next piece (at least one chunk unless the file ends) on the reader's queue and hands it to
    /// `deliver` there.
    func readNext(_ deliver: @escaping @Sendable (Piece) -> Void) {
        queue.async { [self] in deliver(readPiece()) }
    }

    /// Stops reading and closes the file (pending reads deliver an end).
    func close() {
        queue.async { [self] in
            state.withLock { s in
                if s.fd >= 0 { Glibc.close(s.fd) }
                s.fd = -1
                s.done = true
            }
        }
    }

    private func readPiece() -> Piece {
        var buffer = [UInt8](repeating: 0, count: readSize)
        return state.withLock { s -> Piece in
            guard !s.done, s.fd >= 0 else { return Piece(chunks: [], atEnd: true) }
            var chunks: [MediaChunk] = []
            // Read until there is a chunk to give (a read of a large frame may not finish one).
            while chunks.isEmpty {
                let n = buffer.withUnsafeMutableBytes { read(s.fd, $0.baseAddress, readSize) }
                if n < 0 {
                    if errno == EINTR { continue }
                    s.done = true
                    return Piece(chunks: [], atEnd: true, failure: "read \(path): \(String(cString: strerror(errno)))")
                }
                if n == 0 {
                    s.done = true
                    if let last = s.chunker.finish() { chunks.append(last) }
                    if s.chunker.chunks == 0 {
                        return Piece(chunks: [], atEnd: true, failure: checked(s.chunker) ?? "the file holds no frame")
                    }
                    return Piece(chunks: withSource(s.seek.map { $0.flush(chunks) } ?? chunks), atEnd: true)
                }
                bytesReadCounter.wrappingAdd(n, ordering: .relaxed)
                chunks = s.chunker.feed(buffer[0..<n])
                if s.chunker.chunks == 0 && bytesRead >= TSChunker.maxUntimedBytes {
                    s.done = true
                    let why = checked(s.chunker) ?? "no frame with a timestamp in the first \(bytesRead) bytes"
                    return Piece(chunks: [], atEnd: true, failure: why)
                }
                if s.seek != nil {
                    chunks = s.seek!.filter(chunks)
                    if s.seek!.passed { s.seek = nil }
                }
            }
            return Piece(chunks: withSource(chunks), atEnd: false)
        }
    }

    /// The chunks that are one range of the file name it (the chunker's offsets count from the file's start).
    private func withSource(_ chunks: [MediaChunk]) -> [MediaChunk] {
        guard let sourceFile else { return chunks }
        var out = chunks
        for i in out.indices where out[i].sourceOffset != nil { out[i].sourceFile = sourceFile }
        return out
    }

    private func checked(_ chunker: TSChunker) -> String? {
        do {
            try chunker.check()
            return nil
        } catch {
            return error.description
        }
    }
}

/// Starts a playback at the keyframe at or before a media time: holds the chunks from the latest keyframe not after
/// the start until a chunk after the start comes, then lets everything through. Times count from the first chunk.
struct SeekFilter: Sendable {
    let start: UInt64
    private var origin: UInt64?
    private var held: [MediaChunk] = []
    private(set) var passed = false

    init(start: UInt64) { self.start = start }

    mutating func filter(_ chunks: [MediaChunk]) -> [MediaChunk] {
        if passed { return chunks }
        var out: [MediaChunk] = []
        for chunk in chunks {
            if passed {
                out.append(chunk)
                continue
            }
            let origin = self.origin ?? chunk.time
            self.origin = origin
            let at = chunk.time &- origin
            if at <= start {
                if chunk.keyframe { held = [chunk] } else if !held.isEmpty { held.append(chunk) }
            } else {
                passed = true
                out += held
                held = []
                out.append(chunk)
            }
        }
        return out
    }

    /// The end of the file came before the start: what is held (the last keyframe on), so the viewer gets the end.
    func flush(_ chunks: [MediaChunk]) -> [MediaChunk] {
        var copy = self
        let out = copy.filter(chunks)
        return copy.passed ? out : copy.held
    }
}
