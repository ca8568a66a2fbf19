#if canImport(Glibc)
import Glibc
#endif
import CSwitchyardLinux
import Logging

/// The listening socket of a server, on the acceptor loop. Loop thread only.
///
/// Accept errors are told apart: EINTR is retried, EAGAIN ends the batch, ECONNABORTED/EPROTO/EPERM skip one
/// connection, EMFILE/ENFILE use the reserve-descriptor trick (close the spare descriptor, accept and close the
/// pending connection, reopen the spare) so the level-triggered listener does not spin; if even that fails,
/// accepting pauses for 100 ms and resumes by itself.
final class Acceptor: EventHandler, @unchecked Sendable {
    // @unchecked Sendable: touched only on its loop; timers scheduled from that loop capture it.
    let fd: Int32
    unowned let loop: EventLoop
    let logger: Logger
    // @exclusivity(unchecked): the acceptor's state is touched on its loop only, never across a reentrant call.
    @exclusivity(unchecked) private var reserveFD: Int32
    @exclusivity(unchecked) private var listening = false
    @exclusivity(unchecked) private var pausedTimer: TimerHandle?
    /// Accept failures (descriptor shortage, other errors): logged once per episode, which ends when an accept
    /// succeeds again or after 10 s without a failure.
    @exclusivity(unchecked) private var failures = LogEpisode()
    /// Accept failures so far.
    @exclusivity(unchecked) private(set) var failureCount = 0
    let onAccept: (Int32, SocketAddress) -> Void

    /// - Parameter noDelay: TCP_NODELAY on the listening socket: the accepted sockets inherit it (Linux).
    init(address: SocketAddress, backlog: Int32, reusePort: Bool, noDelay: Bool = false, loop: EventLoop,
         logger: Logger, onAccept: @escaping (Int32, SocketAddress) -> Void) throws {
        let fd = try Posix.socket(domain: AF_INET, type: Int32(Glibc.SOCK_STREAM.rawValue))
        do {
            try Posix.setOption(fd, SOL_SOCKET, SO_REUSEADDR, 1)
            if reusePort { try Posix.setOption(fd, SOL_SOCKET, SO_REUSEPORT, 1) }
            if noDelay { try Posix.setOption(fd, Int32(IPPROTO_TCP), TCP_NODELAY, 1) }
            try Posix.bind(fd, to: address)
            try Posix.listen(fd, backlog: backlog)
        } catch {
            Posix.close(fd)
            throw error
        }
        self.fd = fd
        self.loop = loop
        self.logger = logger
        self.onAccept = onAccept
        self.reserveFD = Glibc.open("/dev/null", O_RDONLY | O_CLOEXEC)
    }

    var localAddress: SocketAddress? { SocketAddress.local(of: fd) }

    /// Starts watching the listener. Loop thread only.
    func startListening() throws {
        loop.assertInLoopThread()
        try loop.register(fd: fd, interest: .read, handler: self)
        listening = true
    }

    /// Stops accepting and closes the listening socket. Loop thread only, or any thread once the loop has stopped.
    func close() {
        loop.assertInLoopThreadOrStopped()
        pausedTimer?.cancel()
        pausedTimer = nil
        if listening { loop.unregister(fd: fd) }
        listening = false
        Posix.close(fd)
        if reserveFD >= 0 { Posix.close(reserveFD) }
        reserveFD = -1
    }

    /// Accepts what is pending. Loop thread only.
    func handleEvents(_ events: UInt32) {
        loop.assertInLoopThread()
        // A bounded batch per wakeup keeps the acceptor from starving its own loop's other work.
        for _ in 0..<64 {
            var sin = sockaddr_in()
            var len = socklen_t(MemoryLayout<sockaddr_in>.size)
            let (conn, err) = withUnsafeMutablePointer(to: &sin) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { Posix.accept(fd, $0, &len) }
            }
            if conn >= 0 {
                if failures.count > 0, let count = failures.end() {
                    logger.info("accepting again after failures", metadata: ["failure.count": "\(count)"])
                }
                onAccept(conn, SocketAddress(sin))
                // The spare descriptor is lost when another thread took the number it freed: take a new one
                // once descriptors are free again, or every later EMFILE could only pause accepting.
                if reserveFD < 0 { reserveFD = Glibc.open("/dev/null", O_RDONLY | O_CLOEXEC) }
                continue
            }
            switch err {
            case EAGAIN:
                return
            case ECONNABORTED, EPROTO, EPERM, ENOBUFS, ENOMEM:
                // The pending connection died before we took it, or a transient shortage: skip it.
                continue
            case EMFILE, ENFILE:
                handleDescriptorShortage(err)
                return
            default:
                noteFailure("accept4 failed, pausing accepting for 100 ms", err)
                pauseAccepting()
                return
            }
        }
    }

    private func handleDescriptorShortage(_ err: Int32) {
        noteFailure("out of file descriptors: refusing new connections until some close", err)
        if reserveFD >= 0 {
            Posix.close(reserveFD)
            reserveFD = -1
            var sin = sockaddr_in()
            var len = socklen_t(MemoryLayout<sockaddr_in>.size)
            let (conn, _) = withUnsafeMutablePointer(to: &sin) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { Posix.accept(fd, $0, &len) }
            }
            if conn >= 0 { Posix.close(conn) }
            reserveFD = Glibc.open("/dev/null", O_RDONLY | O_CLOEXEC)
            if reserveFD >= 0 && conn >= 0 { return }
        }
        pauseAccepting()
    }

    /// One log line when an episode of failures starts, one with the count when it ends.
    private func noteFailure(_ what: Logger.Message, _ err: Int32) {
        failureCount += 1
        guard case .started(let ended) = failures.record(now: sy_monotonic_ns()) else { return }
        if ended > 0 { logger.info("accept failures", metadata: ["failure.count": "\(ended)"]) }
        logger.info("\(what) (logged once per episode)",
                    metadata: ["errno": "\(err)", "error": "\(IOError(errnoCode: err, call: "accept4"))"])
    }

    /// Stops watching the listener for 100 ms so a persistent failure cannot spin the loop.
    private func pauseAccepting() {
        guard listening, pausedTimer == nil else { return }
        loop.modify(fd: fd, interest: .none)
        pausedTimer = loop.schedule(after: .milliseconds(100)) { [self] in
            pausedTimer = nil
            if listening { loop.modify(fd: fd, interest: .read) }
        }
    }
}
