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

/// The outcome of a call on a non-blocking descriptor: done, or it would block.
public enum IOResult<T> {
    /// The call completed with this value.
    case processed(T)
    /// The call would block (EAGAIN; for `Posix.connect`, a connect still in progress).
    case wouldBlock
}

extension IOResult: Sendable where T: Sendable {}
extension IOResult: Equatable where T: Equatable {}

/// Every system call of the reactor goes through here, under one policy (`check`): EINTR is retried, EAGAIN
/// becomes `.wouldBlock`, other failures throw `IOError` carrying errno and the call's name. EBADF and EFAULT are
/// programmer errors (a descriptor used after close, a bad pointer) and stop the process at once. `close` is never
/// retried. The public wrappers serve code that blocks in its calls (clients on their own thread, tools); they are
/// safe to call from any thread on a descriptor that thread owns.
public enum Posix {
    /// The syscall policy. `body` returns the call's result (negative with errno set on failure). `inProgress`: an
    /// errno that means "started, not finished" and becomes `.wouldBlock` like EAGAIN (EINPROGRESS for connect).
    /// `retryInterrupted: false` turns EINTR into `.wouldBlock` instead of a retry: for a connect (which goes on in
    /// the background after EINTR and must not be started again) and for the pollers' waits (which return to the
    /// loop).
    @inline(__always)
    static func check(
        _ call: StaticString, inProgress: Int32 = EAGAIN, retryInterrupted: Bool = true, _ body: () -> Int
    ) throws(IOError) -> IOResult<Int> {
        while true {
            let r = body()
            if r >= 0 { return .processed(r) }
            let e = errno
            switch e {
            case EINTR:
                if retryInterrupted { continue }
                return .wouldBlock
            case EAGAIN, inProgress: return .wouldBlock
            case EBADF, EFAULT:
                preconditionFailure("\(call) failed with errno \(e): descriptor or pointer misuse")
            default:
                throw IOError(errnoCode: e, call: "\(call)")
            }
        }
    }

    /// `check` for a call that completes or fails (EAGAIN is a failure like any other). `label` names the call in
    /// the error when it says more than `call` (`"bind 127.0.0.1:80"`). Not for the per-message path.
    static func complete(_ call: StaticString, _ label: @autoclosure () -> String? = nil, _ body: () -> Int)
        throws(IOError) -> Int
    {
        let result: IOResult<Int>
        do {
            result = try check(call, body)
        } catch {
            throw IOError(errnoCode: error.errnoCode, call: label() ?? error.call)
        }
        guard case .processed(let r) = result else { throw IOError(errnoCode: EAGAIN, call: label() ?? "\(call)") }
        return r
    }

    @inline(__always)
    static func read(_ fd: Int32, _ buffer: UnsafeMutableRawPointer, _ count: Int) throws(IOError) -> IOResult<Int> {
        try check("read") { sy_read(fd, buffer, count) }
    }

    @inline(__always)
    static func write(_ fd: Int32, _ buffer: UnsafeRawPointer, _ count: Int) throws(IOError) -> IOResult<Int> {
        try check("write") { sy_write(fd, buffer, count) }
    }

    @inline(__always)
    static func writev(_ fd: Int32, _ iov: UnsafePointer<iovec>, _ count: Int32) throws(IOError) -> IOResult<Int> {
        try check("writev") { sy_writev(fd, iov, count) }
    }

    /// sendmsg of the pieces with MSG_MORE (more follows at once: the kernel holds them for it).
    @inline(__always)
    static func sendMore(_ fd: Int32, _ iov: UnsafePointer<iovec>, _ count: Int32) throws(IOError) -> IOResult<Int> {
        try check("sendmsg") { sy_sendv_more(fd, iov, count) }
    }

    /// sendfile of up to `count` bytes of `file` from `offset` (advanced by what was sent) to the socket `fd`.
    @inline(__always)
    static func sendFile(to fd: Int32, from file: Int32, offset: inout Int64, count: Int) throws(IOError)
        -> IOResult<Int>
    {
        try check("sendfile") { sy_sendfile(fd, file, &offset, count) }
    }

    /// accept4, non-blocking and close-on-exec: the descriptor, or 0 and the errno (EAGAIN when nothing is pending)
    /// for the acceptor to tell the failures apart.
    static func accept(_ fd: Int32, _ addr: UnsafeMutablePointer<sockaddr>, _ len: UnsafeMutablePointer<socklen_t>)
        -> (fd: Int32, errno: Int32)
    {
        do {
            switch try check("accept4", { Int(sy_accept4(fd, addr, len)) }) {
            case .processed(let conn): return (Int32(conn), 0)
            case .wouldBlock: return (-1, EAGAIN)
            }
        } catch {
            return (-1, error.errnoCode)
        }
    }

    /// Closes `fd`. Never retried: on Linux the descriptor is released even when close reports EINTR. Safe to call
    /// from any thread on a descriptor it owns; closing one that is not open stops the process.
    public static func close(_ fd: Int32) {
        let r = Glibc.close(fd)
        if r < 0 && errno == EBADF { preconditionFailure("close(\(fd)) of a descriptor that is not open") }
    }

    /// A non-blocking, close-on-exec socket for a loop.
    static func socket(domain: Int32, type: Int32) throws(IOError) -> Int32 {
        Int32(try complete("socket") { Int(sy_socket_nonblocking(domain, type)) })
    }

    /// A blocking, close-on-exec IPv4 socket (`SOCK_STREAM` or `SOCK_DGRAM`), for a thread that waits in its calls;
    /// not for a loop. Safe to call from any thread.
    public static func blockingSocket(type: Int32) throws(IOError) -> Int32 {
        Int32(try complete("socket") { Int(Glibc.socket(AF_INET, type | Int32(SOCK_CLOEXEC.rawValue), 0)) })
    }

    /// setsockopt with an Int32 value. Safe to call from any thread.
    public static func setOption(_ fd: Int32, _ level: Int32, _ name: Int32, _ value: Int32) throws(IOError) {
        var v = value
        _ = try complete("setsockopt") { Int(setsockopt(fd, level, name, &v, socklen_t(MemoryLayout<Int32>.size))) }
    }

    /// Sets a socket timeout (`SO_RCVTIMEO` or `SO_SNDTIMEO`) of a blocking socket: a call that waits longer
    /// returns `.wouldBlock`. Safe to call from any thread.
    public static func setTimeout(_ fd: Int32, option: Int32, _ timeout: Duration) throws(IOError) {
        let us = Int(clamping: timeout.nanosecondsSaturated / 1000)
        var tv = timeval(tv_sec: us / 1_000_000, tv_usec: us % 1_000_000)
        _ = try complete("setsockopt") {
            Int(setsockopt(fd, SOL_SOCKET, option, &tv, socklen_t(MemoryLayout<timeval>.size)))
        }
    }

    /// The pending error of a socket (SO_ERROR): 0 when there is none.
    static func socketError(_ fd: Int32) -> Int32 {
        var err: Int32 = 0
        var len = socklen_t(MemoryLayout<Int32>.size)
        do {
            _ = try complete("getsockopt") { Int(getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len)) }
        } catch {
            return error.errnoCode
        }
        return err
    }

    /// Binds `fd` to `address`.
    static func bind(_ fd: Int32, to address: SocketAddress, label: String = "bind") throws(IOError) {
        _ = try complete("bind", "\(label) \(address)") { Int(address.withSockaddr { Glibc.bind(fd, $0, $1) }) }
    }

    static func listen(_ fd: Int32, backlog: Int32) throws(IOError) {
        _ = try complete("listen") { Int(Glibc.listen(fd, backlog)) }
    }

    /// Connects `fd` to `address`. `.wouldBlock`: the connect is in progress (EINPROGRESS on a non-blocking socket,
    /// or the send timeout of a blocking one); it is never started again, not even after EINTR, which leaves it
    /// going on in the background. Writability, then the socket's pending error, tell how it ends. Safe to call
    /// from any thread on a descriptor it owns.
    public static func connect(_ fd: Int32, to address: SocketAddress) throws(IOError) -> IOResult<Void> {
        let result: IOResult<Int>
        do {
            result = try check("connect", inProgress: EINPROGRESS, retryInterrupted: false) {
                Int(address.withSockaddr { Glibc.connect(fd, $0, $1) })
            }
        } catch {
            throw IOError(errnoCode: error.errnoCode, call: "connect \(address)")
        }
        guard case .processed = result else { return .wouldBlock }
        return .processed(())
    }

    /// shutdown(2): `SHUT_WR` sends our FIN.
    static func shutdown(_ fd: Int32, _ how: Int32) throws(IOError) {
        _ = try complete("shutdown") { Int(Glibc.shutdown(fd, how)) }
    }

    /// Sends on a connected socket (no SIGPIPE). Safe to call from any thread on a descriptor it owns.
    public static func send(_ fd: Int32, _ bytes: UnsafeRawBufferPointer) throws(IOError) -> IOResult<Int> {
        try check("send") { Glibc.send(fd, bytes.baseAddress, bytes.count, Int32(MSG_NOSIGNAL)) }
    }

    /// Sends one datagram to `address` (no SIGPIPE). Safe to call from any thread on a descriptor it owns.
    public static func send(_ fd: Int32, _ bytes: UnsafeRawBufferPointer, to address: SocketAddress)
        throws(IOError) -> IOResult<Int>
    {
        try check("sendto") {
            address.withSockaddr { sendto(fd, bytes.baseAddress, bytes.count, Int32(MSG_NOSIGNAL), $0, $1) }
        }
    }

    /// Receives into `buffer` (`flags`: `MSG_DONTWAIT` to poll a blocking socket). 0: end of stream. Safe to call
    /// from any thread on a descriptor it owns.
    public static func receive(_ fd: Int32, into buffer: UnsafeMutableRawBufferPointer, flags: Int32 = 0)
        throws(IOError) -> IOResult<Int>
    {
        try check("recv") { recv(fd, buffer.baseAddress, buffer.count, flags) }
    }

    /// Waits up to `timeoutMs` (-1: forever) for `fd` to become readable. False on timeout, and when a signal
    /// interrupted the wait (the caller checks its deadline and waits again). Safe to call from any thread.
    public static func waitReadable(_ fd: Int32, timeoutMs: Int32) throws(IOError) -> Bool {
        var pfd = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
        guard case .processed(let n) = try check("poll", retryInterrupted: false, { Int(poll(&pfd, 1, timeoutMs)) })
        else { return false }
        return n > 0
    }

    /// The poll(2) events of `fd` now, without waiting (0 when none, or when the call failed).
    static func eventsNow(_ fd: Int32, interest: Int16) -> Int16 {
        var pfd = pollfd(fd: fd, events: interest, revents: 0)
        return poll(&pfd, 1, 0) == 1 ? pfd.revents : 0
    }

    /// recvfrom of one datagram into `buffer` with `MSG_TRUNC`: the datagram's full length (more than
    /// `buffer.count` when it was cut) and its sender.
    static func receiveDatagram(_ fd: Int32, into buffer: UnsafeMutableRawBufferPointer)
        throws(IOError) -> IOResult<(count: Int, sender: SocketAddress)>
    {
        var sin = sockaddr_in()
        var len = socklen_t(MemoryLayout<sockaddr_in>.size)
        let r = try withUnsafeMutablePointer(to: &sin) { (sinPointer) throws(IOError) -> IOResult<Int> in
            try sinPointer.withMemoryRebound(to: sockaddr.self, capacity: 1) { (sa) throws(IOError) -> IOResult<Int> in
                try check("recvfrom") { recvfrom(fd, buffer.baseAddress, buffer.count, Int32(MSG_TRUNC), sa, &len) }
            }
        }
        guard case .processed(let n) = r else { return .wouldBlock }
        return .processed((n, SocketAddress(sin)))
    }

    /// sendmsg (no SIGPIPE).
    static func sendMessage(_ fd: Int32, _ message: UnsafePointer<msghdr>) throws(IOError) -> IOResult<Int> {
        try check("sendmsg") { sendmsg(fd, message, Int32(MSG_NOSIGNAL)) }
    }

    /// getsockname or getpeername of an IPv4 socket; nil when it fails (not connected, say).
    static func address(of fd: Int32, peer: Bool) -> SocketAddress? {
        var sin = sockaddr_in()
        var len = socklen_t(MemoryLayout<sockaddr_in>.size)
        let r = withUnsafeMutablePointer(to: &sin) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { sa in
                try? complete(peer ? "getpeername" : "getsockname") {
                    Int(peer ? getpeername(fd, sa, &len) : getsockname(fd, sa, &len))
                }
            }
        }
        return r == nil ? nil : SocketAddress(sin)
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

    /// Wall-clock time (CLOCK_REALTIME) in milliseconds since 1970: for times other hosts read (database rows).
    public static func unixMilliseconds() -> Int64 {
        var ts = timespec()
        clock_gettime(CLOCK_REALTIME, &ts)
        return Int64(ts.tv_sec) * 1000 + Int64(ts.tv_nsec) / 1_000_000
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
