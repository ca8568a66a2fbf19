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
    /// The address the client connected to (asked of the kernel when read: most owners never need it).
    public var local: SocketAddress { SocketAddress.local(of: fd) ?? SocketAddress(ip: 0, port: 0) }
    /// The loop that accepted it; the accept callback runs there.
    public let loop: EventLoop
}

/// Listens and hands each accepted socket, raw, to its owner on an I/O loop: for owners that serve the descriptor
/// themselves (a `TCPTunnel`) rather than as a `TCPConnection` (`TCPServer`). Each I/O loop of the group has a
/// listening socket of its own on the same port (`SO_REUSEPORT`: the kernel spreads new connections over them) and
/// accepts on it, so a connection is served on the loop that accepted it with no hand-over between threads. The
/// accept policy is the servers' (EMFILE reserve descriptor, bounded batches, see `Acceptor`). `start()` and
/// `stop()` from any thread but the group's loops.
public final class TCPListener: Sendable {
    public let group: EventLoopGroup
    public let host: String
    public let port: Int
    public let backlog: Int32
    /// TCP_NODELAY on the listening sockets, which the accepted ones inherit (Linux): no system call per connection.
    public let noDelay: Bool
    public let logger: Logger
    private let onAccept: @Sendable (AcceptedSocket) -> Void
    private let state = Mutex<(acceptors: [LoopBound<Acceptor>], address: SocketAddress?, started: Bool)>(
        ([], nil, false))

    /// - Parameter onAccept: Runs on the loop that accepted the socket, once per connection.
    public init(group: EventLoopGroup, host: String = "0.0.0.0", port: Int, backlog: Int32 = 1024,
                noDelay: Bool = false,
                logger: Logger = Logger(label: "switchyard.listener", factory: { _ in SwiftLogNoOpLogHandler() }),
                onAccept: @escaping @Sendable (AcceptedSocket) -> Void) {
        self.group = group
        self.host = host
        self.port = port
        self.backlog = backlog
        self.noDelay = noDelay
        self.logger = logger
        self.onAccept = onAccept
    }

    /// Binds, listens and starts accepting on every I/O loop; returns the bound address (the kernel's port when 0
    /// was asked).
    @discardableResult
    public func start() throws -> SocketAddress {
        if state.withLock({ s in defer { s.started = true }; return s.started }) { throw ReactorError.alreadyStarted }
        var address = try SocketAddress(host: host, port: port)
        var started: [LoopBound<Acceptor>] = []
        do {
            for loop in group.ioLoops {
                let onAccept = self.onAccept
                let acceptor = try Acceptor(address: address, backlog: backlog, reusePort: true, noDelay: noDelay,
                                            loop: loop, logger: logger) { fd, peer in
                    onAccept(AcceptedSocket(fd: fd, peer: peer, loop: loop))
                }
                if address.port == 0, let bound = acceptor.localAddress { address = bound }  // the others join it
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
                started.append(handedOver)
            }
        } catch {
            Self.close(started)
            throw error
        }
        state.withLock {
            $0.acceptors = started
            $0.address = address
        }
        logger.info("listening", metadata: ["address": "\(address)", "poller": "\(group.pollerKind)",
                                            "loops": "\(started.count)"])
        return address
    }

    /// The bound address once started.
    public var localAddress: SocketAddress? { state.withLock { $0.address } }

    /// Stops accepting and closes the listening sockets; returns once they are closed. Idempotent.
    public func stop() {
        let acceptors = state.withLock { s -> [LoopBound<Acceptor>] in
            defer { s.acceptors = [] }
            return s.acceptors
        }
        Self.close(acceptors)
    }

    private static func close(_ acceptors: [LoopBound<Acceptor>]) {
        for bound in acceptors {
            if bound.loop.inLoopThread {
                bound.value.close()  // released on its own loop: it cannot wait for itself
                continue
            }
            let closed = DispatchSemaphore(value: 0)
            if bound.loop.enqueue({
                bound.value.close()
                closed.signal()
            }) {
                closed.wait()
            } else {
                bound.value.close()  // the loop has stopped: no other thread touches the acceptor now
            }
        }
    }

    deinit { stop() }
}
