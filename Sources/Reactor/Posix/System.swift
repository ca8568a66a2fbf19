#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif
import CSwitchyardLinux

/// An operating-system call failed. Carries errno and the name of the call.
public struct IOError: Error, CustomStringConvertible, Sendable, Equatable {
    /// The errno value the call left behind.
    public let errnoCode: Int32
    /// The system call (or the operation) that failed, e.g. `"accept4"`.
    public let call: String

    public init(errnoCode: Int32, call: String) {
        self.errnoCode = errnoCode
        self.call = call
    }

    public var description: String {
        "\(call) failed: \(String(cString: strerror(errnoCode))) (errno \(errnoCode))"
    }
}

/// The outcome of a non-blocking call: done, or it would block.
@usableFromInline
enum IOResult<T> {
    case processed(T)
    case wouldBlock
}

/// Every system call of the reactor goes through here: EINTR is retried, EAGAIN becomes `.wouldBlock`,
/// other failures throw `IOError` carrying errno and the call's name. EBADF and EFAULT are programmer
/// errors (a descriptor used after close, a bad pointer) and stop the process at once.
enum Posix {
    @inline(__always)
    static func check(_ call: StaticString, _ body: () -> Int) throws -> IOResult<Int> {
        while true {
            let r = body()
            if r >= 0 { return .processed(r) }
            let e = errno
            switch e {
            case EINTR: continue
            case EAGAIN: return .wouldBlock
            case EBADF, EFAULT:
                preconditionFailure("\(call) failed with errno \(e): descriptor or pointer misuse")
            default:
                throw IOError(errnoCode: e, call: "\(call)")
            }
        }
    }

    @inline(__always)
    static func read(_ fd: Int32, _ buffer: UnsafeMutableRawPointer, _ count: Int) throws -> IOResult<Int> {
        try check("read") { sy_read(fd, buffer, count) }
    }

    @inline(__always)
    static func write(_ fd: Int32, _ buffer: UnsafeRawPointer, _ count: Int) throws -> IOResult<Int> {
        try check("write") { sy_write(fd, buffer, count) }
    }

    @inline(__always)
    static func writev(_ fd: Int32, _ iov: UnsafePointer<iovec>, _ count: Int32) throws -> IOResult<Int> {
        try check("writev") { sy_writev(fd, iov, count) }
    }

    static func accept(_ fd: Int32, _ addr: UnsafeMutablePointer<sockaddr>, _ len: UnsafeMutablePointer<socklen_t>)
        -> (fd: Int32, errno: Int32)
    {
        while true {
            let r = sy_accept4(fd, addr, len)
            if r >= 0 { return (r, 0) }
            let e = errno
            if e == EINTR { continue }
            if e == EBADF || e == EFAULT { preconditionFailure("accept4 failed with errno \(e)") }
            return (-1, e)
        }
    }

    /// `close` is never retried: on Linux the descriptor is released even when it reports EINTR.
    static func close(_ fd: Int32) {
        let r = Glibc.close(fd)
        if r < 0 && errno == EBADF { preconditionFailure("close(\(fd)) of a descriptor that is not open") }
    }

    static func socket(domain: Int32, type: Int32) throws -> Int32 {
        let fd = sy_socket_nonblocking(domain, type)
        if fd < 0 { throw IOError(errnoCode: errno, call: "socket") }
        return fd
    }

    static func setOption(_ fd: Int32, _ level: Int32, _ name: Int32, _ value: Int32) throws {
        var v = value
        if setsockopt(fd, level, name, &v, socklen_t(MemoryLayout<Int32>.size)) < 0 {
            throw IOError(errnoCode: errno, call: "setsockopt")
        }
    }

    static func socketError(_ fd: Int32) -> Int32 {
        var err: Int32 = 0
        var len = socklen_t(MemoryLayout<Int32>.size)
        if getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) < 0 { return errno }
        return err
    }

    static func ignoreSIGPIPE() { sy_ignore_sigpipe() }

    /// A file's text up to the first line that starts with `stop` (a /proc file: read in small pieces until then,
    /// or until end of file or `limit` bytes). Nil if it cannot be opened or read.
    static func readFile(_ path: String, until stop: String, limit: Int) -> [UInt8]? {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        if fd < 0 { return nil }
        // Not `Posix.close`: a stray close elsewhere in the process (a test closing a number twice) must not stop
        // the process here, and a /proc file has nothing to flush.
        defer { _ = Glibc.close(fd) }
        let marker = Array(("\n" + stop).utf8)
        var out: [UInt8] = []
        var piece = [UInt8](repeating: 0, count: 4096)
        while out.count < limit {
            let r = piece.withUnsafeMutableBytes { raw in try? read(fd, raw.baseAddress!, raw.count) }
            guard case .processed(let n)? = r else { return nil }
            if n == 0 { break }
            let searchFrom = max(0, out.count - marker.count)
            out.append(contentsOf: piece[0..<n])
            if let end = firstRange(of: marker, in: out, from: searchFrom) {
                out.removeSubrange((end + 1)...)
                break
            }
        }
        return out
    }

    private static func firstRange(of needle: [UInt8], in haystack: [UInt8], from start: Int) -> Int? {
        guard haystack.count >= needle.count else { return nil }
        var i = start
        while i + needle.count <= haystack.count {
            if haystack[i] == needle[0] && haystack[i..<(i + needle.count)].elementsEqual(needle) { return i }
            i += 1
        }
        return nil
    }
}

/// Facts about the machine.
public enum SystemInfo {
    /// Online processor count (at least 1).
    public static var coreCount: Int { max(1, Int(sysconf(Int32(_SC_NPROCESSORS_ONLN)))) }

    /// The CPUs this process may run on (sched_getaffinity: taskset, cpusets, containers); nil if unknown.
    public static func allowedCPUs() -> [Int]? {
        var mask = [UInt8](repeating: 0, count: 1024)  // room for 8192 CPUs
        let written = mask.withUnsafeMutableBytes { sy_sched_getaffinity($0.baseAddress, $0.count) }
        guard written > 0 else { return nil }
        var cpus: [Int] = []
        for (i, byte) in mask.prefix(Int(written)).enumerated() where byte != 0 {
            for bit in 0..<8 where byte & (1 << bit) != 0 { cpus.append(i * 8 + bit) }
        }
        return cpus.isEmpty ? nil : cpus
    }

    /// CPU time this process has used (all threads), in nanoseconds.
    public static func processCPUNanoseconds() -> UInt64 {
        var ts = timespec()
        guard clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts) == 0 else { return 0 }
        return UInt64(ts.tv_sec) &* 1_000_000_000 &+ UInt64(ts.tv_nsec)
    }

    /// Monotonic clock reading in nanoseconds.
    @inline(__always)
    public static func monotonicNanoseconds() -> UInt64 { sy_monotonic_ns() }

    /// Number of open descriptors of this process (entries of /proc/self/fd).
    public static func openDescriptorCount() -> Int {
        guard let dir = opendir("/proc/self/fd") else { return -1 }
        defer { closedir(dir) }
        var count = 0
        while let entry = readdir(dir) {
            let name = withUnsafeBytes(of: entry.pointee.d_name) { raw in raw.first ?? 0 }
            if name != UInt8(ascii: ".") { count += 1 }
        }
        return count - 1  // the directory stream's own descriptor
    }
}
