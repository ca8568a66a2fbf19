#if canImport(Glibc)
import Glibc
#endif
import Dispatch
import Logging
import Synchronization

/// A socket a `TCPListener` accepted, handed to its owner on `loop`.
public struct AcceptedSocket: Sendable {
    /// The connected, non-blocking descriptor. Its receiver owns it: use it or `Posix.close` it.
    public let fd: Int32
    /// The client's address.
    public let peer: SocketAddress
    /// The address the client connected to.
    public let local: SocketAddress
    /// The loop it was placed on (round robin over the group's I/O loops); the accept callback runs there.
    public let loop: EventLoop
}

/// Listens and hands each accepted socket, raw, to the group's I/O loops in turn: for owners that serve the
/// descriptor themselves (a `TCPTunnel`) rather than as a `TCPConnection` (`TCPServer`). The listener runs on the
/// group's acceptor loop with its accept policy (EMFILE reserve descriptor, bounded batches, see `Acceptor`).
/// Safe to use from any thread but the group's loops for `start()` and `stop()`.
public final class TCPListener: Sendable {
    public let group: EventLoopGroup
    public let host: String
    public let port: Int
    public let backlog: Int32
    public let reusePort: Bool
    public let logger: Logger
    private let onAccept: @Sendable (AcceptedSocket) -> Void
    private let state = Mutex<(acceptor: LoopBound<Acceptor>?, address: SocketAddress?, started: Bool)>(
        (nil, nil, false))

    /// - Parameter onAccept: Runs on the socket's loop, once per accepted connection.
    public init(group: EventLoopGroup, host: String = "0.0.0.0", port: Int, backlog: Int32 = 1024,
                reusePort: Bool = false,
                logger: Logger = Logger(label: "switchyard.listener", factory: { _ in SwiftLogNoOpLogHandler() }),
                onAccept: @escaping @Sendable (AcceptedSocket) -> Void) {
        self.group = group
        self.host = host
        self.port = port
        self.backlog = backlog
        self.reusePort = reusePort
        self.logger = logger
        self.onAccept = onAccept
    }

    /// Binds, listens and starts accepting; returns the bound address (the kernel's port when 0 was asked).
    @discardableResult
    public func start() throws -> SocketAddress {
        if state.withLock({ s in defer { s.started = true }; return s.started }) { throw ReactorError.alreadyStarted }
        let address = try SocketAddress(host: host, port: port)
        let loop = group.acceptorLoop
        let group = self.group
        let onAccept = self.onAccept
        let acceptor = try Acceptor(address: address, backlog: backlog, reusePort: reusePort, loop: loop,
                                    logger: logger) { fd, peer in
            let target = group.next()
            let local = SocketAddress.local(of: fd) ?? SocketAddress(ip: 0, port: 0)
            let socket = AcceptedSocket(fd: fd, peer: peer, local: local, loop: target)
            if target.inLoopThread {
                onAccept(socket)
            } else if !target.enqueue({ onAccept(socket) }) {
                Posix.close(fd)  // the I/O loop has stopped: nobody would serve it
            }
        }
        let bound = acceptor.localAddress ?? address
        let handedOver = LoopBound(acceptor, loop: loop)
        let failure = Mutex<Error?>(nil)
        let done = DispatchSemaphore(value: 0)
        loop.executeInLoop {
            do {
                try handedOver.value.startListening()
            } catch {
                handedOver.value.close()
                failure.withLock { $0 = error }
            }
            done.signal()
        }
        done.wait()
        if let error = failure.withLock({ $0 }) { throw error }
        state.withLock {
            $0.acceptor = handedOver
            $0.address = bound
        }
        logger.info("listening", metadata: ["address": "\(bound)", "poller": "\(group.pollerKind)"])
        return bound
    }

    /// The bound address once started.
    public var localAddress: SocketAddress? { state.withLock { $0.address } }

    /// Stops accepting and closes the listening socket; returns once it is closed. Idempotent.
    public func stop() {
        guard let bound = state.withLock({ s -> LoopBound<Acceptor>? in
            defer { s.acceptor = nil }
            return s.acceptor
        }) else { return }
        let closed = DispatchSemaphore(value: 0)
        if group.acceptorLoop.enqueue({
            bound.value.close()
            closed.signal()
        }) {
            closed.wait()
        } else {
            bound.value.close()  // the loop has stopped: no other thread touches the acceptor now
        }
    }

    deinit { stop() }
}
