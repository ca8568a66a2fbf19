#if canImport(Glibc)
import Glibc
#endif
import Logging
import Synchronization

/// Configuration of a `TCPClient`.
public struct ClientConfiguration: Sendable {
    public var host: String
    public var port: Int
    /// A connect that has not completed by then fails with `ReactorError.connectTimeout`.
    public var connectTimeout: Duration
    /// Reconnect after a failed connect or a lost connection, with capped exponential backoff.
    public var reconnect: Bool
    public var initialBackoff: Duration
    public var maxBackoff: Duration
    public var connection: ConnectionOptions

    public init(
        host: String = "127.0.0.1",
        port: Int,
        connectTimeout: Duration = .seconds(5),
        reconnect: Bool = true,
        initialBackoff: Duration = .milliseconds(100),
        maxBackoff: Duration = .seconds(5),
        connection: ConnectionOptions = ConnectionOptions()
    ) {
        self.host = host
        self.port = port
        self.connectTimeout = connectTimeout
        self.reconnect = reconnect
        self.initialBackoff = initialBackoff
        self.maxBackoff = maxBackoff
        self.connection = connection
    }
}

/// A TCP client on one loop: non-blocking connect with a timeout, reconnect with capped exponential backoff, and the
/// same callbacks as a server's connections. Safe to use from any thread.
public final class TCPClient: @unchecked Sendable {
    // @unchecked Sendable: the connector state is touched only on `loop`; `current` is a Mutex.

    public let loop: EventLoop
    public let configuration: ClientConfiguration
    /// Where the client logs (failed connects, at debug).
    public let logger: Logger
    let callbacks: ConnectionCallbacks
    let onConnectFailed: (@Sendable (Error) -> Void)?
    private let address: SocketAddress
    private let current = Mutex<TCPConnection?>(nil)
    private let attemptCounter = Atomic<Int>(0)

    // Loop thread only. @exclusivity(unchecked): one thread, and no access spans a call that reaches these again.
    @exclusivity(unchecked) private var wantConnected = false
    @exclusivity(unchecked) private var pending: TCPDialer?
    @exclusivity(unchecked) private var retryTimer: TimerHandle?
    @exclusivity(unchecked) private var backoff: Duration

    /// Resolves the address now (a bad host throws `ReactorError.badAddress`); connects on `connect()`.
    public init(loop: EventLoop, configuration: ClientConfiguration, callbacks: ConnectionCallbacks,
                logger: Logger = Logger(label: "switchyard.client", factory: { _ in SwiftLogNoOpLogHandler() }),
                onConnectFailed: (@Sendable (Error) -> Void)? = nil) throws {
        self.loop = loop
        self.logger = logger
        self.configuration = configuration
        self.callbacks = callbacks
        self.onConnectFailed = onConnectFailed
        self.address = try SocketAddress(host: configuration.host, port: configuration.port)
        self.backoff = configuration.initialBackoff
    }

    /// The current connection, if connected. Safe to call from any thread.
    public var connection: TCPConnection? { current.withLock { $0 } }

    /// Connect attempts so far.
    public var attempts: Int { attemptCounter.load(ordering: .relaxed) }

    /// Starts connecting (and keeps reconnecting if configured). Safe to call from any thread.
    public func connect() {
        loop.executeInLoop { [self] in
            guard !wantConnected else { return }
            wantConnected = true
            backoff = configuration.initialBackoff
            startConnect()
        }
    }

    /// Stops reconnecting and closes the connection after flushing it. Safe to call from any thread.
    public func disconnect() {
        loop.executeInLoop { [self] in
            wantConnected = false
            retryTimer?.cancel()
            retryTimer = nil
            pending?.cancel()
            pending = nil
            current.withLock { $0 }?.closeGracefullyInLoop()
        }
    }

    /// Sends on the current connection. Safe to call from any thread. False when not connected.
    @discardableResult
    public func send(_ bytes: [UInt8]) -> Bool {
        guard let conn = connection else { return false }
        return conn.send(bytes)
    }

    private func startConnect() {
        guard wantConnected, pending == nil, connection == nil else { return }
        attemptCounter.wrappingAdd(1, ordering: .relaxed)
        // TCP_NODELAY is the connection's option (`establish`), not the dialer's.
        pending = TCPDialer.connect(on: loop, to: address, timeout: configuration.connectTimeout,
                                    noDelay: false) { [self] result in
            pending = nil
            switch result {
            case .success(let fd): established(fd)
            case .failure(let error): failed(error)
            }
        }
    }

    private func established(_ fd: Int32) {
        backoff = configuration.initialBackoff
        let local = SocketAddress.local(of: fd) ?? SocketAddress(ip: 0, port: 0)
        let conn = TCPConnection(
            id: TCPConnection.makeID(), fd: fd, loop: loop, peer: address, local: local, callbacks: callbacks,
            options: configuration.connection)
        current.withLock { $0 = conn }
        conn.onClosedByOwner = { [self] _ in
            current.withLock { $0 = nil }
            scheduleRetry()
        }
        do {
            try conn.establish()
        } catch {
            current.withLock { $0 = nil }
            failed(error)
        }
    }

    private func failed(_ error: Error) {
        logger.debug("connect failed", metadata: ["address": "\(address)", "error": "\(error)"])
        onConnectFailed?(error)
        scheduleRetry()
    }

    private func scheduleRetry() {
        guard wantConnected, configuration.reconnect, retryTimer == nil else {
            if !configuration.reconnect { wantConnected = false }
            return
        }
        let delay = backoff
        backoff = min(backoff * 2, configuration.maxBackoff)
        retryTimer = loop.schedule(after: delay) { [self] in
            retryTimer = nil
            startConnect()
        }
    }
}
