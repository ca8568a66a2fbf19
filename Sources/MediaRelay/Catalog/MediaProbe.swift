#if canImport(Glibc)
import Glibc
#endif

/// What a probe learned of a file: its program and length.
public struct MediaProbeResult: Sendable, Equatable {
    public var program: ProgramMap
    public var durationMilliseconds: Int64
    public var size: Int64
}

/// Errors of a probe.
public enum MediaProbeError: Error, Equatable, Sendable, CustomStringConvertible {
    case cannotRead(path: String, errno: Int32)
    case unusable(path: String, TSChunker.StreamError)

    public var description: String {
        switch self {
        case .cannotRead(let path, let code): return "cannot read \(path): \(String(cString: strerror(code)))"
        case .unusable(let path, let error): return "\(path): \(error)"
        }
    }
}

/// Checks that a file can be relayed before it is added or played: it is a transport stream, it has a program
/// and a clock (`TSChunker.check`), and its length from the first and the last timestamps. Reads at most
/// `window` bytes at each end (4 MiB: a few seconds of a high-rate movie). Blocking file I/O: call it off the loops.
public enum MediaProbe {
    public static let defaultWindow = 4 << 20

    public static func probe(path: String, window: Int = defaultWindow) throws(MediaProbeError)
        -> MediaProbeResult
    {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { throw .cannotRead(path: path, errno: errno) }
        defer { close(fd) }
        var info = stat()
        guard fstat(fd, &info) == 0 else { throw .cannotRead(path: path, errno: errno) }
        let size = Int64(info.st_size)
        var head = TSChunker()
        var headChunks = head.feed(try read(fd, at: 0, count: window, path: path))
        if size <= Int64(window), let last = head.finish() { headChunks.append(last) }
        do {
            try head.check()
        } catch {
            throw .unusable(path: path, error)
        }
        guard let first = headChunks.first?.time else {
            throw .unusable(path: path, .noClock("no complete frame in the first \(window >> 20) MiB"))
        }
        var lastTime = headChunks.last?.time ?? first
        var frame = period(headChunks)
        if size > Int64(window) {
            // The tail, from a packet boundary: the chunker finds the program again in the repeated tables.
            let offset = (size - Int64(window)) / Int64(TSPacket.size) * Int64(TSPacket.size)
            var tail = TSChunker()
            var tailChunks = tail.feed(try read(fd, at: offset, count: window, path: path))
            if let last = tail.finish() { tailChunks.append(last) }
            if let last = tailChunks.last?.time { lastTime = last }
            frame = period(tailChunks) ?? frame
        }
        // From the first frame's start to the last frame's end.
        let ticks = ((lastTime &- first) & ((1 << 33) - 1)) + (frame ?? 0)
        guard let program = head.program else { throw .unusable(path: path, .noClock("no program map table")) }
        return MediaProbeResult(program: program, durationMilliseconds: Int64(ticks / 90), size: size)
    }

    /// The last frame period of the chunks (nil for fewer than two).
    private static func period(_ chunks: [MediaChunk]) -> UInt64? {
        guard chunks.count >= 2 else { return nil }
        let (a, b) = (chunks[chunks.count - 2].time, chunks[chunks.count - 1].time)
        return b > a ? b - a : nil
    }

    private static func read(_ fd: Int32, at offset: Int64, count: Int, path: String) throws(MediaProbeError)
        -> [UInt8]
    {
        var bytes = [UInt8](repeating: 0, count: count)
        var filled = 0
        while filled < count {
            let n = bytes.withUnsafeMutableBytes { raw in
                pread(fd, raw.baseAddress! + filled, count - filled, off_t(offset) + off_t(filled))
            }
            if n < 0 {
                if errno == EINTR { continue }
                throw .cannotRead(path: path, errno: errno)
            }
            if n == 0 { break }
            filled += n
        }
        bytes.removeLast(count - filled)
        return bytes
    }
}
