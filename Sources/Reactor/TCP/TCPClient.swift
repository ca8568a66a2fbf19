#if canImport(Glibc)
import Glibc
#endif
import Logging
import Synchronization

/// A host and port a client connects to.
public struct ClientEndpoint: Sendable, Hashable, CustomStringConvertible {
    public var host: String
    public var port: Int

    public init(host: String, port: Int) {
        self.host = host
        self.port = port
    }

    /// Parses `HOST:PORT` (port 1...65535); nil when it is not that.
    public init?(_ text: some StringProtocol) {
        guard let colon = text.lastIndex(of: ":"), let port = Int(text[text.index(after: colon)...]),
              (1...65535).contains(port), colon != text.startIndex
        else { return nil }
        self.init(host: String(text[..<colon]), port: port)
    }

    /// Parses a comma-separated list of `HOST:PORT`; nil when any entry is not that or the list is empty.
    public static func list(_ text: String) -> [ClientEndpoint]? {
        let entries = text.split(separator: ",", omittingEmptySubsequences: false)
            .map { $0.trimmingCharacters(in: " ") }
        let endpoints = entries.compactMap { ClientEndpoint($0) }
        return endpoints.isEmpty || endpoints.count != entries.count ? nil : endpoints
    }

    public var description: String { "\(host):\(port)" }
}

extension Substring {
    fileprivate func trimmingCharacters(in set: Character) -> Substring {
        var s = self
        while s.first == set { s = s.dropFirst() }
        while s.last == set { s = s.dropLast() }
        return s
    }
}

/// Configuration of a `TCPClient`.
public struct ClientConfiguration: Sendable {
    public var host: String
    public var port: Int
    /// Further addresses of the same service (replicas), tried in turn after `host:port` when a connect fails or
    /// the connection is lost: each retry goes to the next address, and the backoff grows only once every
    /// address has failed in a row. Empty: `host:port` only.
    public var alternates: [ClientEndpoint] = []
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
    /// `host:port` first, then the alternates.
    private let addresses: [SocketAddress]
    /// Loop thread only (read anywhere through `currentAddress`): the address tried or connected now.
    private let addressIndex = Atomic<Int>(0)
    /// Loop thread only: connects failed in a row (a connection that was established resets it).
    @exclusivity(unchecked) private var failuresInARow = 0
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
        var addresses = [try SocketAddress(host: configuration.host, port: configuration.port)]
        for alternate in configuration.alternates {
            addresses.append(try SocketAddress(host: alternate.host, port: alternate.port))
        }
        self.addresses = addresses
        self.backoff = configuration.initialBackoff
    }

    /// The current connection, if connected. Safe to call from any thread.
    public var connection: TCPConnection? { current.withLock { $0 } }

    /// The address connected to, or being tried (the first until a failover). Safe to call from any thread.
    public var currentAddress: SocketAddress { addresses[addressIndex.load(ordering: .relaxed)] }

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
        let address = currentAddress
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
        failuresInARow = 0
        let address = currentAddress
        let local = SocketAddress.local(of: fd) ?? SocketAddress(ip: 0, port: 0)
        let conn = TCPConnection(
            id: TCPConnection.makeID(), fd: fd, loop: loop, peer: address, local: local, callbacks: callbacks,
            options: configuration.connection)
        current.withLock { $0 = conn }
        conn.onClosedByOwner = { [self] _ in
            current.withLock { $0 = nil }
            // Lost: the next try goes to the next address (a replica), after the first backoff.
            moveToNextAddress()
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
        logger.debug("connect failed", metadata: ["address": "\(currentAddress)", "error": "\(error)"])
        onConnectFailed?(error)
        failuresInARow += 1
        moveToNextAddress()
        scheduleRetry()
    }

    private func moveToNextAddress() {
        guard addresses.count > 1 else { return }
        addressIndex.store((addressIndex.load(ordering: .relaxed) + 1) % addresses.count, ordering: .relaxed)
    }

    private func scheduleRetry() {
        guard wantConnected, configuration.reconnect, retryTimer == nil else {
            if !configuration.reconnect { wantConnected = false }
            return
        }
        // Another address not yet tried in this round: at once. A whole round failed: the backoff, growing.
        if addresses.count > 1, failuresInARow % addresses.count != 0 {
            startConnect()
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
