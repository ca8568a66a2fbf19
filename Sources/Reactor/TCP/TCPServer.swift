#if canImport(Glibc)
import Glibc
#endif
import Dispatch
import Logging
import SwitchyardCore
import Synchronization

/// Configuration of a `TCPServer`.
public struct ServerConfiguration: Sendable {
    /// Address to bind (IPv4 dotted quad or host name). Services bind loopback unless told otherwise.
    public var host: String
    /// Port to bind; 0 lets the kernel pick (read it back from `start()`).
    public var port: Int
    public var backlog: Int32
    /// SO_REUSEPORT, for several processes sharing a port.
    public var reusePort: Bool
    /// Connections beyond this are accepted and closed at once, with one log line per burst.
    public var maxConnections: Int
    /// Per-connection options (high/low water marks, TCP_NODELAY, linger).
    public var connection: ConnectionOptions

    public init(
        host: String = "127.0.0.1",
        port: Int = 0,
        backlog: Int32 = 1024,
        reusePort: Bool = false,
        maxConnections: Int = 100_000,
        connection: ConnectionOptions = ConnectionOptions()
    ) {
        self.host = host
        self.port = port
        self.backlog = backlog
        self.reusePort = reusePort
        self.maxConnections = maxConnections
        self.connection = connection
    }
}

/// A TCP server: accepts on the group's acceptor loop and hands each connection to an I/O loop chosen by the
/// group's `LoopPlacement`.
/// Keeps a registry of its connections: count, look up, send by id, broadcast, close. Safe to use from any thread.
public final class TCPServer: @unchecked Sendable {
    // @unchecked Sendable: `acceptor` is touched only on the acceptor loop; everything else is immutable, a Mutex
    // or an Atomic.

    public let group: EventLoopGroup
    public let configuration: ServerConfiguration
    let callbacks: ConnectionCallbacks
    private var acceptor: Acceptor?
    private let registry = Mutex<[UInt64: TCPConnection]>([:])
    private let liveCount = Atomic<Int>(0)
    private let refused = Atomic<Int>(0)
    private let failedRegistrations = Atomic<Int>(0)
    private let started = Atomic<Bool>(false)
    private let boundAddress = Mutex<SocketAddress?>(nil)
    private let drained = Mutex<DispatchSemaphore?>(nil)
    /// Refused connections (limit reached, descriptor the loop cannot watch): logged once per episode, which ends
    /// when a connection is served again or after 10 s without a refusal.
    private let refusals = Mutex(LogEpisode())
    private let refusing = Atomic<Bool>(false)
    /// Connections closed by `ConnectionOptions.idleTimeout`, logged once per episode.
    private let idleCloses = Atomic<Int>(0)
    private let idleEpisode = Mutex(LogEpisode())
    /// Where the server logs (listening, refusals once per episode, shutdown); nothing per message.
    public let logger: Logger

    public init(group: EventLoopGroup, configuration: ServerConfiguration = ServerConfiguration(),
                callbacks: ConnectionCallbacks,
                logger: Logger = Logger(label: "switchyard.server", factory: { _ in SwiftLogNoOpLogHandler() })) {
        self.logger = logger
        self.group = group
        self.configuration = configuration
        self.callbacks = callbacks
    }

    deinit {
        // Released without shutdown() (open connections keep a server alive, so there are none): stop listening,
        // or the loop would keep accepting for a server that is gone.
        guard let acceptor else { return }
        let bound = LoopBound(acceptor, loop: group.acceptorLoop)
        group.acceptorLoop.executeOrRunIfStopped { bound.value.close() }
    }

    /// Binds, listens and starts accepting. Returns the bound address (with the kernel's port when 0 was asked).
    /// Call from any thread but the group's own loops.
    @discardableResult
    public func start() throws -> SocketAddress {
        try configuration.validate()
        if started.exchange(true, ordering: .acquiringAndReleasing) { throw ReactorError.alreadyStarted }
        let address = try SocketAddress(host: configuration.host, port: configuration.port)
        let loop = group.acceptorLoop
        let acceptor = try Acceptor(
            address: address, backlog: configuration.backlog, reusePort: configuration.reusePort, loop: loop,
            logger: logger
        ) { [weak self] fd, peer in
            guard let self else { return Posix.close(fd) }  // released meanwhile: its deinit is closing the listener
            handleAccepted(fd: fd, peer: peer)
        }
        let bound = acceptor.localAddress ?? address
        let result = Mutex<Error?>(nil)
        let done = DispatchSemaphore(value: 0)
        let handedOver = LoopBound(acceptor, loop: loop)
        loop.executeInLoop { [self] in
            do {
                try handedOver.value.startListening()
                self.acceptor = handedOver.value
            } catch {
                handedOver.value.close()
                result.withLock { $0 = error }
            }
            done.signal()
        }
        done.wait()
        if let error = result.withLock({ $0 }) { throw error }
        boundAddress.withLock { $0 = bound }
        logger.info("listening", metadata: ["address": "\(bound)", "poller": "\(group.pollerKind)"])
        return bound
    }

    /// The bound address once started.
    public var localAddress: SocketAddress? { boundAddress.withLock { $0 } }

    /// Open connections (accepted and not yet closed).
    public var connectionCount: Int { liveCount.load(ordering: .acquiring) }
    /// Connections refused because `maxConnections` was reached.
    public var refusedCount: Int { refused.load(ordering: .relaxed) }
    /// Accepted descriptors the loop could not watch (select's FD_SETSIZE), closed at once.
    public var failedRegistrationCount: Int { failedRegistrations.load(ordering: .relaxed) }

    /// Runs on the acceptor loop.
    private func handleAccepted(fd: Int32, peer: SocketAddress) {
        if liveCount.load(ordering: .relaxed) >= configuration.maxConnections {
            Posix.close(fd)
            refused.wrappingAdd(1, ordering: .relaxed)
            noteRefusal("connection limit reached", peer: peer, metadata: ["limit": "\(configuration.maxConnections)"])
            return
        }
        liveCount.wrappingAdd(1, ordering: .relaxed)
        let loop = group.placeConnection()
        let local = SocketAddress.local(of: fd) ?? SocketAddress(ip: 0, port: 0)
        let conn = TCPConnection(
            id: TCPConnection.makeID(), fd: fd, loop: loop, peer: peer, local: local, callbacks: callbacks,
            options: configuration.connection)
        let handOver: @Sendable () -> Void = { [self] in
            conn.onClosedByOwner = { [self] c in connectionClosed(c) }
            registry.withLock { $0[conn.id] = conn }
            do {
                try conn.establish()
                noteServed()
            } catch {
                conn.onClosedByOwner = nil
                failedRegistrations.wrappingAdd(1, ordering: .relaxed)
                noteRefusal("cannot serve accepted connection, closed it", peer: peer,
                            metadata: ["error": "\(error)"])
                connectionClosed(conn)
            }
        }
        if loop.inLoopThread {
            handOver()
        } else if !loop.enqueue(handOver) {
            // The I/O loop has stopped (its group is shutting down): nobody will serve this connection.
            Posix.close(fd)
            connectionClosed(conn)
        }
    }

    /// A refused connection: one log line when an episode of refusals starts (with the first peer and reason), one
    /// with the count when it ends. Any thread.
    private func noteRefusal(_ reason: Logger.Message, peer: SocketAddress, metadata: Logger.Metadata) {
        let step = refusals.withLock { $0.record(now: SystemInfo.monotonicNanoseconds()) }
        refusing.store(true, ordering: .relaxed)
        guard case .started(let ended) = step else { return }
        if ended > 0 { logger.info("refused connections", metadata: ["refused.count": "\(ended)"]) }
        var all = metadata
        all["peer.address"] = "\(peer)"
        logger.info("\(reason); refusing (logged once per episode)", metadata: all)
    }

    /// A connection was served: ends an episode of refusals (with its count). Any thread; a load when none runs.
    private func noteServed() {
        guard refusing.load(ordering: .relaxed), refusing.exchange(false, ordering: .relaxed),
              let count = refusals.withLock({ $0.end() }) else { return }
        logger.info("serving connections again after refusals", metadata: ["refused.count": "\(count)"])
    }

    /// Connections closed because the peer was silent for longer than `ConnectionOptions.idleTimeout`.
    public var idleClosedCount: Int { idleCloses.load(ordering: .relaxed) }

    private func connectionClosed(_ conn: TCPConnection) {
        if case .idleTimeout? = conn.closeReason as? ReactorError {
            idleCloses.wrappingAdd(1, ordering: .relaxed)
            if case .started(let ended) = idleEpisode.withLock({ $0.record(now: SystemInfo.monotonicNanoseconds()) }) {
                if ended > 0 { logger.info("closed idle connections", metadata: ["count": "\(ended)"]) }
                logger.info("closing connections silent for longer than the idle timeout (logged once per episode)",
                            metadata: ["peer.address": "\(conn.peerAddress)"])
            }
        }
        conn.loop.placedConnections.wrappingSubtract(1, ordering: .relaxed)
        registry.withLock { _ = $0.removeValue(forKey: conn.id) }
        if liveCount.wrappingSubtract(1, ordering: .acquiringAndReleasing).newValue == 0 {
            _ = drained.withLock { $0?.signal() }
        }
    }

    // MARK: Registry

    /// The open connection with this id, if any.
    public func connection(id: UInt64) -> TCPConnection? { registry.withLock { $0[id] } }

    /// Ids of the open connections.
    public var connectionIDs: [UInt64] { registry.withLock { Array($0.keys) } }

    /// Sends to one connection by id. Safe to call from any thread. False if there is no such connection.
    @discardableResult
    public func send(to id: UInt64, _ bytes: [UInt8]) -> Bool {
        guard let conn = connection(id: id) else { return false }
        conn.send(bytes)
        return true
    }

    /// Sends to every open connection: one task per loop. Safe to call from any thread.
    public func broadcast(_ bytes: [UInt8]) {
        let byLoop = registry.withLock { reg in Dictionary(grouping: reg.values, by: { ObjectIdentifier($0.loop) }) }
        for conns in byLoop.values {
            let list = LoopBound(conns, loop: conns[0].loop)
            list.loop.execute {
                bytes.withUnsafeBytes { raw in for c in list.value { c.sendInLoop(raw) } }
            }
        }
    }

    /// Closes one connection gracefully (flush, then close). Safe to call from any thread.
    @discardableResult
    public func close(connection id: UInt64) -> Bool {
        guard let conn = connection(id: id) else { return false }
        conn.close()
        return true
    }

    // MARK: Shutdown

    /// Stops accepting, closes every connection after flushing its queued output, and waits up to `timeout`
    /// for them to finish; what is left is closed at once. Blocks; call from any thread but the group's loops.
    public func shutdown(timeout: Duration = .seconds(5)) {
        precondition(!group.allLoops.contains { $0.inLoopThread }, "TCPServer.shutdown() called on a loop thread")
        let loop = group.acceptorLoop
        let stopped = DispatchSemaphore(value: 0)
        if loop.enqueue({ [self] in
            closeAcceptor()
            stopped.signal()
        }) {
            stopped.wait()
        } else {
            closeAcceptor()  // its loop has returned from run(): no other thread touches the acceptor now
        }
        let sem = DispatchSemaphore(value: 0)
        drained.withLock { $0 = sem }
        // Each I/O loop closes its own connections in a task queued behind the hand-overs of connections the
        // acceptor took just before it closed, so those are registered by then and close with the rest.
        var stranded = 0
        for ioLoop in group.ioLoops {
            let closeAll: @Sendable () -> Void = { [self] in
                for conn in connections(on: ioLoop) { conn.closeGracefullyInLoop() }
            }
            if !ioLoop.enqueue(closeAll) { stranded += connections(on: ioLoop).count }
        }
        if stranded > 0 {
            logger.warning("server shut down after its event loops stopped: their connections stay open",
                           metadata: ["count": "\(stranded)"])
        } else if connectionCount > 0 {
            let deadline = DispatchTime.now() + .nanoseconds(Int(clamping: timeout.nanosecondsSaturated))
            if connectionCount > 0 && sem.wait(timeout: deadline) == .timedOut && connectionCount > 0 {
                let left = registry.withLock { Array($0.values) }
                logger.warning("shutdown timeout: closing connections that did not finish", metadata: ["count": "\(left.count)"])
                for conn in left { conn.forceClose() }
                _ = sem.wait(timeout: .now() + .seconds(2))
            }
        }
        drained.withLock { $0 = nil }
        logger.info("server stopped")
    }

    /// Acceptor loop (or any thread once that loop has stopped).
    private func closeAcceptor() {
        acceptor?.close()
        acceptor = nil
    }

    private func connections(on loop: EventLoop) -> [TCPConnection] {
        registry.withLock { $0.values.filter { $0.loop === loop } }
    }
}
