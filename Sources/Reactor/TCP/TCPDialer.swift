#if canImport(Glibc)
import Glibc
#endif
import CSwitchyardLinux

/// One non-blocking connect on a loop, with a timeout, handing over the raw connected descriptor: for owners that
/// serve it themselves (a `TCPTunnel`). `TCPClient` is the managed kind (reconnects, a `TCPConnection`).
///
/// ```swift
/// let dial = TCPDialer.connect(on: loop, to: address, timeout: .seconds(2)) { result in
///     switch result {
///     case .success(let fd): serve(fd)              // the receiver owns fd
///     case .failure(let error): report(error)       // IOError (refused, unreachable) or ReactorError.connectTimeout
///     }
/// }
/// dial.cancel()  // the descriptor closes; the completion does not run
/// ```
///
/// Loop thread only: `connect`, `cancel` and the completion all run on `loop`. The completion runs once, never
/// from inside `connect` (an immediate result waits for the loop's next turn), unless the attempt was cancelled.
public final class TCPDialer: EventHandler, @unchecked Sendable {
    // @unchecked Sendable: touched only on `loop`; crosses threads only inside the loop's own tasks.
    public let loop: EventLoop
    public let address: SocketAddress
    private let fd: Int32
    // @exclusivity(unchecked): loop thread only, short accesses; the completion runs after the state is cleared.
    @exclusivity(unchecked) private var completion: ((Result<Int32, any Error>) -> Void)?
    @exclusivity(unchecked) private var timer: TimerHandle?
    @exclusivity(unchecked) private var watching = false
    /// A success hands the descriptor over still registered with the loop (``dial(on:to:timeout:noDelay:completion:)``).
    private let handOver: Bool
    /// The success handed over a registered descriptor.
    @exclusivity(unchecked) private var handedRegistered = false
    /// Its write interest was dropped while it waited for its owner.
    @exclusivity(unchecked) private var quieted = false

    private init(loop: EventLoop, address: SocketAddress, fd: Int32, handOver: Bool,
                 completion: @escaping (Result<Int32, any Error>) -> Void) {
        self.loop = loop
        self.address = address
        self.fd = fd
        self.handOver = handOver
        self.completion = completion
    }

    /// Starts connecting `to` address. `noDelay` sets TCP_NODELAY on the socket. Loop thread only.
    @discardableResult
    public static func connect(on loop: EventLoop, to address: SocketAddress, timeout: Duration, noDelay: Bool = true,
                               completion: @escaping (Result<Int32, any Error>) -> Void) -> TCPDialer {
        start(on: loop, to: address, timeout: timeout, noDelay: noDelay, handOver: false, completion: completion)
    }

    /// Starts connecting as ``connect(on:to:timeout:noDelay:completion:)``, and hands the connected socket over as
    /// a ``DialedSocket``: still watched by the loop, so a ``TCPTunnel`` takes it over with one poller change
    /// instead of a removal and a new registration. Loop thread only.
    @discardableResult
    public static func dial(on loop: EventLoop, to address: SocketAddress, timeout: Duration, noDelay: Bool = true,
                            completion: @escaping (Result<DialedSocket, any Error>) -> Void) -> TCPDialer {
        var dialer: TCPDialer?
        dialer = start(on: loop, to: address, timeout: timeout, noDelay: noDelay, handOver: true) { result in
            let registered = dialer?.handedRegistered ?? false
            dialer = nil
            completion(result.map { DialedSocket(fd: $0, loop: loop, registered: registered) })
        }
        return dialer!
    }

    private static func start(on loop: EventLoop, to address: SocketAddress, timeout: Duration, noDelay: Bool,
                              handOver: Bool, completion: @escaping (Result<Int32, any Error>) -> Void) -> TCPDialer {
        loop.assertInLoopThread()
        let fd: Int32
        do {
            fd = try Posix.socket(domain: AF_INET, type: Int32(Glibc.SOCK_STREAM.rawValue))
        } catch {
            let dialer = TCPDialer(loop: loop, address: address, fd: -1, handOver: handOver, completion: completion)
            dialer.finishLater(.failure(error))
            return dialer
        }
        if noDelay { try? Posix.setOption(fd, Int32(IPPROTO_TCP), TCP_NODELAY, 1) }
        let dialer = TCPDialer(loop: loop, address: address, fd: fd, handOver: handOver, completion: completion)
        let started: IOResult<Void>
        do {
            started = try Posix.connect(fd, to: address)
        } catch {
            dialer.finishLater(.failure(error))
            return dialer
        }
        switch started {
        case .processed:
            dialer.finishLater(.success(fd))
        case .wouldBlock:
            // To this host (loopback) the handshake is over by the time connect returns: the answer came back within
            // the call. One poll(2) tells, and saves the registration, the wait for its event and the change of it.
            let now = Posix.eventsNow(fd, interest: Int16(POLLOUT))
            if now & Int16(POLLERR | POLLHUP) != 0 {
                let err = Posix.socketError(fd)
                let error = IOError(errnoCode: err != 0 ? err : ECONNREFUSED, call: "connect \(address)")
                dialer.finishLater(.failure(error))
                return dialer
            }
            if now & Int16(POLLOUT) != 0 {
                dialer.finishLater(dialer.connectedResult())
                return dialer
            }
            do {
                try loop.register(fd: fd, interest: .write, handler: dialer)
                dialer.watching = true
            } catch {
                dialer.finishLater(.failure(error))
                return dialer
            }
            dialer.timer = loop.schedule(after: timeout) { [weak dialer] in
                guard let dialer, dialer.completion != nil else { return }
                dialer.timer = nil
                dialer.finish(.failure(ReactorError.connectTimeout))
            }
        }
        return dialer
    }

    /// Abandons the attempt: the descriptor closes, the completion never runs. Loop thread only; nothing once it
    /// has completed.
    public func cancel() {
        loop.assertInLoopThread()
        guard completion != nil else { return }
        completion = nil
        release(closing: true)
    }

    func handleEvents(_ events: UInt32) {
        guard completion != nil else {
            // Handed over registered and not claimed yet: a connected socket is always writable, so stop watching
            // it for that until its owner watches it (once).
            if handedRegistered && !quieted {
                quieted = true
                loop.modify(fd: fd, interest: .none)
            }
            return
        }
        // epoll and poll flag a failed connect (EPOLLERR/POLLERR with the writability); select cannot tell, so there
        // the socket's error is always asked for. A clean writable event is a connect that succeeded.
        if events & (PollBits.error | PollBits.hangup) != 0 || loop.pollerKind == .select {
            let err = Posix.socketError(fd)
            if err != 0 {
                finish(.failure(IOError(errnoCode: err, call: "connect \(address)")))
                return
            }
        }
        finish(connectedResult())
    }

    /// The result of a connect that completed without an error: a success, unless it connected to itself.
    private func connectedResult() -> Result<Int32, any Error> {
        // A connect to a free port of this host can connect to itself: that is a refusal. (The peer is the address
        // connected to: only the local end needs asking.)
        if let local = SocketAddress.local(of: fd), local == address {
            return .failure(IOError(errnoCode: ECONNREFUSED, call: "connect \(address) (self-connect)"))
        }
        return .success(fd)
    }

    /// The loop stopped during the connect: it will never complete.
    func loopDidStop() {
        watching = false
        guard completion != nil else { return }
        completion = nil
        release(closing: true)
    }

    private func finishLater(_ result: Result<Int32, any Error>) {
        loop.execute { [self] in finish(result) }
    }

    private func finish(_ result: Result<Int32, any Error>) {
        // No completion: the attempt was cancelled, or its loop stopped, and the descriptor closed then (a result
        // posted before that, an immediate connect's, must not close the number again: another socket may have it).
        guard let completion else { return }
        self.completion = nil
        let succeeded: Bool
        if case .success = result { succeeded = true } else { succeeded = false }
        if succeeded && handOver {
            // The registration goes with the descriptor (`DialedSocket`); this dialer ignores its events from now on.
            handedRegistered = watching
            watching = false
        }
        release(closing: !succeeded)
        completion(result)
    }

    private func release(closing: Bool) {
        timer?.cancel()
        timer = nil
        if watching { loop.unregister(fd: fd) }
        watching = false
        if closing && fd >= 0 { Posix.close(fd) }
    }
}

/// A connected socket from ``TCPDialer/dial(on:to:timeout:noDelay:completion:)``, still watched by its loop (when the
/// connect had to wait): hand it to a ``TCPTunnel`` (its initializer that takes one), which takes the registration
/// over, or `close()` it. Dropped unclaimed, it closes itself. Loop thread only.
public final class DialedSocket: @unchecked Sendable {
    // @unchecked Sendable: touched only on `loop`.
    public let fd: Int32
    public let loop: EventLoop
    /// The loop watches the descriptor (for the dialer, which no longer acts on its events).
    let registered: Bool
    @exclusivity(unchecked) private var owned = true

    init(fd: Int32, loop: EventLoop, registered: Bool) {
        self.fd = fd
        self.loop = loop
        self.registered = registered
    }

    /// Takes the descriptor (and its registration) over; nil when it was taken or closed already.
    func take() -> (fd: Int32, registered: Bool)? {
        guard owned else { return nil }
        owned = false
        return (fd, registered)
    }

    /// Closes the socket (it stops being watched first). Loop thread only; nothing once taken or closed.
    public func close() {
        guard owned else { return }
        owned = false
        Self.release(fd, registered: registered, on: loop)
    }

    deinit {
        guard owned else { return }
        let (fd, registered, loop) = (fd, registered, loop)
        // On the loop (at once on its thread), or here once it has stopped.
        loop.executeOrRunIfStopped { Self.release(fd, registered: registered, on: loop) }
    }

    private static func release(_ fd: Int32, registered: Bool, on loop: EventLoop) {
        if registered { loop.unregister(fd: fd) }
        Posix.close(fd)
    }
}
