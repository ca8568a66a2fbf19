#if canImport(Glibc)
import Glibc
#endif
import CSwitchyardLinux

/// Two connected sockets joined on one loop: what one side sends goes to the other, both ways, until both are
/// done. The byte pump of a TCP proxy.
///
///     client --read/splice--> [at most bufferBytes in flight] --write/splice--> server
///     client <--write/splice-- [at most bufferBytes in flight] <--read/splice-- server
///
/// - Backpressure: a side is not read while its bytes in flight wait for the other side (at most
///   `TunnelOptions.bufferBytes` per direction), so a peer that does not read stops the other from sending, and
///   the tunnel's memory is bounded whatever the peers do.
/// - Half-close: a side's FIN is passed on as `shutdown(SHUT_WR)` on the other once its bytes are delivered; the
///   other direction goes on. Both FINs delivered: the tunnel ends `.finished` (the second FIN is passed on by the
///   close itself, which sends it after what is still queued).
/// - A reset or error on one side ends the tunnel and resets the other side (`SO_LINGER` 0), so a cut transfer
///   is never mistaken for a complete one.
/// - Splice (`TunnelTransfer.splice`) moves bytes through a pipe taken from the loop's small pool for the time they
///   are in flight; idle tunnels hold no pipe and no buffer.
///
/// Loop thread only (create, start and close it on `loop`). The tunnel owns both descriptors from `start()` on and
/// closes them when it ends, then calls `onEnd` once (possibly from inside `start()`: it reads what the client has
/// sent already at once).
public final class TCPTunnel: @unchecked Sendable {
    // @unchecked Sendable: every field is touched on `loop` only; the type crosses threads only to be handed to it.
    public let loop: EventLoop
    public let options: TunnelOptions
    private let onEnd: (TCPTunnel, TunnelOutcome) -> Void
    // @exclusivity(unchecked): loop thread only, never across a reentrant call (the end callback runs last).
    private let up: Flow  // client -> server
    private let down: Flow  // server -> client
    /// The handlers while their sockets are watched (a side done both ways stops being watched).
    @exclusivity(unchecked) private var clientHandler: SideHandler?
    @exclusivity(unchecked) private var serverHandler: SideHandler?
    @exclusivity(unchecked) private var clientInterest: IOInterest = .none
    @exclusivity(unchecked) private var serverInterest: IOInterest = .none
    @exclusivity(unchecked) private var ended = false
    /// Sides that hung up while they were not read, or whose FIN was read with nothing to write to them (`park`).
    @exclusivity(unchecked) private var parked: Set<TunnelSide> = []
    @exclusivity(unchecked) private var lastActivity: UInt64 = 0
    @exclusivity(unchecked) private var idleTimer: TimerHandle?
    /// Bytes to send to the server before anything from the client (a PROXY protocol header).
    @exclusivity(unchecked) private var preamble: [UInt8]
    @exclusivity(unchecked) private var preambleSent = 0
    /// The server's socket as the dialer handed it over (``DialedSocket``): `start()` takes it and its registration.
    @exclusivity(unchecked) private var dialed: DialedSocket?
    @exclusivity(unchecked) private var serverRegistered = false

    /// - Parameters:
    ///   - loop: The loop both sockets are served on (the caller's).
    ///   - client, server: Connected, non-blocking stream sockets; the tunnel owns them from `start()` on.
    ///   - preamble: Sent to the server first (e.g. a PROXY protocol header).
    ///   - onEnd: Called once, on `loop`, after both descriptors are closed.
    public init(loop: EventLoop, client: Int32, server: Int32, options: TunnelOptions = TunnelOptions(),
                preamble: [UInt8] = [], onEnd: @escaping (TCPTunnel, TunnelOutcome) -> Void) {
        self.loop = loop
        self.options = options
        self.onEnd = onEnd
        self.preamble = preamble
        up = Flow(from: client, to: server, fromSide: .client, toSide: .server, splicing: options.transfer == .splice)
        down = Flow(from: server, to: client, fromSide: .server, toSide: .client,
                    splicing: options.transfer == .splice)
    }

    /// A tunnel from an accepted client to a socket ``TCPDialer/dial(on:to:timeout:noDelay:completion:)``
    /// connected: `start()` takes over the loop's registration of the server's socket with one poller change. Until
    /// `start()`, `server` stays the caller's (dropped, it closes itself); `start()` fails when it was closed.
    public convenience init(loop: EventLoop, client: AcceptedSocket, server: DialedSocket,
                            options: TunnelOptions = TunnelOptions(), preamble: [UInt8] = [],
                            onEnd: @escaping (TCPTunnel, TunnelOutcome) -> Void) {
        precondition(server.loop === loop && client.loop === loop, "the sockets belong to another loop")
        self.init(loop: loop, client: client.fd, server: server.fd, options: options, preamble: preamble, onEnd: onEnd)
        dialed = server
    }

    /// Bytes delivered so far, client to server and server to client.
    public var bytesMoved: (clientToServer: UInt64, serverToClient: UInt64) { (up.moved, down.moved) }

    /// Watches both sockets and starts moving bytes. Loop thread only. On failure (select's descriptor limit) both
    /// descriptors are closed, `onEnd` is not called, and the error is thrown.
    public func start() throws {
        loop.assertInLoopThread()
        if let dialed {
            self.dialed = nil
            guard let (_, registered) = dialed.take() else {
                ended = true
                Posix.close(up.from)
                throw IOError(errnoCode: EBADF, call: "tunnel start (the dialed socket was closed)")
            }
            serverRegistered = registered
        }
        let client = SideHandler(tunnel: self, side: .client)
        let server = SideHandler(tunnel: self, side: .server)
        do {
            try loop.register(fd: up.from, interest: .read, handler: client)
            clientHandler = client
            clientInterest = .read
            if serverRegistered {
                try loop.reassign(fd: down.from, interest: .read, handler: server)
                serverRegistered = false
            } else {
                try loop.register(fd: down.from, interest: .read, handler: server)
            }
            serverHandler = server
            serverInterest = .read
        } catch {
            if clientHandler != nil { loop.unregister(fd: up.from) }
            if serverRegistered { loop.unregister(fd: down.from) }
            clientHandler = nil
            serverRegistered = false
            ended = true
            Posix.close(up.from)
            Posix.close(down.from)
            throw error
        }
        lastActivity = loop.wakeTime
        if let timeout = options.idleTimeout { armIdleTimer(after: timeout.nanosecondsSaturated) }
        if !preamble.isEmpty { sendPreamble() }
        // A client usually sends its request as soon as its connect completes, so it tends to be waiting by now:
        // read it at once rather than after another wait for readiness (nothing there costs one read).
        if !ended { handle(.client, PollBits.read) }
    }

    /// Ends the tunnel now (`TunnelEnd.closed`): both sockets close, bytes in flight are dropped. Loop thread
    /// only; nothing when it has ended already.
    public func close() {
        loop.assertInLoopThread()
        finish(.closed, reset: false)
    }

    // MARK: Events

    fileprivate func handle(_ side: TunnelSide, _ bits: UInt32) {
        if ended { return }
        lastActivity = loop.wakeTime
        if bits & PollBits.error != 0 {
            let fd = side == .client ? up.from : down.from
            let err = Posix.socketError(fd)
            if err != 0 {
                finish(.failed(side, IOError(errnoCode: err, call: "socket")), reset: true)
                return
            }
        }
        let readable = bits & (PollBits.read | PollBits.readHangup | PollBits.hangup | PollBits.error) != 0
        let writable = bits & (PollBits.write | PollBits.hangup | PollBits.error) != 0
        switch side {
        case .client:
            if readable && clientInterest.contains(.read) { pump(up) }
            if !ended && writable && clientInterest.contains(.write) { pump(down) }
        case .server:
            if writable && serverInterest.contains(.write) {
                if preambleSent < preamble.count { sendPreamble() }
                if !ended { pump(up) }
            }
            if !ended && readable && serverInterest.contains(.read) { pump(down) }
        }
        if ended { return }
        if up.shut && down.shut {
            finish(.finished, reset: false)
            return
        }
        if bits & PollBits.hangup != 0 && !(side == .client ? clientInterest : serverInterest).contains(.read) {
            park(side)
        }
        updateInterest()
    }

    /// The preamble, before any client byte: written at once into the fresh connection's empty socket buffer
    /// (a short write, which would take a server that never reads, waits for writability).
    private func sendPreamble() {
        while preambleSent < preamble.count {
            let fd = down.from
            let offset = preambleSent
            let result = preamble.withUnsafeBytes { raw -> Result<IOResult<Int>, IOError> in
                do throws(IOError) {
                    return .success(try Posix.write(fd, raw.baseAddress! + offset, raw.count - offset))
                } catch {
                    return .failure(error)
                }
            }
            if case .failure(let error) = result {
                finish(.failed(.server, error), reset: true)
                return
            }
            guard case .success(.processed(let n)) = result else { return }
            preambleSent += n
        }
        preamble = []
        preambleSent = 0
    }

    /// Moves what `flow` can move now: delivers what is in flight, reads more while the destination takes it
    /// (at most a few rounds, and another only after a read that filled the buffer: the socket is likely empty
    /// after a short one, and the poller is level-triggered), passes the FIN on.
    private func pump(_ flow: Flow) {
        var rounds = 0
        var drained = false
        while true {
            if flow.pending > 0 {
                if !deliver(flow) { return }
                if flow.pending > 0 { break }  // the destination is full: wait for writability
            }
            if drained || flow.eof || rounds == 4 || (flow === up && !preamble.isEmpty) { break }
            rounds += 1
            switch receive(flow) {
            case .full: continue
            case .some:
                drained = true  // a short read: the socket is empty, another read would only say so
                continue
            case .none: break
            case .failed: return
            }
            break
        }
        if flow.eof && flow.pending == 0 && !flow.shut {
            let other = flow === up ? down : up
            if other.eof && other.shut {
                // The last FIN to pass on: both sockets have sent theirs and have nothing unread, so closing them
                // sends it (a graceful close, what is still queued goes first), one system call fewer.
                finish(.finished, reset: false)
                return
            }
            // Fails only when the destination is gone, which its own events report.
            try? Posix.shutdown(flow.to, Int32(SHUT_WR))
            flow.shut = true
        }
    }

    private enum Received { case full, some, none, failed }

    /// With `.auto`, a splice that moves less than this goes back to copying.
    static let autoCopyBelow = 4096

    /// One read (or splice) from `flow.from` into the flow, which holds nothing when called.
    private func receive(_ flow: Flow) -> Received {
        let limit = options.bufferBytes
        switch flow.splicing ? TunnelTransfer.splice : .copy {
        case .copy, .auto:
            let room = min(limit, loop.scratch.count)
            let result: IOResult<Int>
            do {
                result = try Posix.read(flow.from, loop.scratch.baseAddress!, room)
            } catch {
                finish(.failed(flow.fromSide, error), reset: true)
                return .failed
            }
            guard case .processed(let n) = result else { return .none }
            if n == 0 {
                flow.eof = true
                return .none
            }
            // Straight out of the scratch area; only what the destination does not take now is kept.
            var sent = 0
            while sent < n {
                let w: IOResult<Int>
                do {
                    w = try Posix.write(flow.to, loop.scratch.baseAddress! + sent, n - sent)
                } catch {
                    finish(.failed(flow.toSide, error), reset: true)
                    return .failed
                }
                guard case .processed(let m) = w else { break }
                sent += m
            }
            flow.moved &+= UInt64(sent)
            if sent < n {
                let left = n - sent
                guard let chunk = try? loop.pool.allocate(minimumCapacity: left) else {
                    finish(.failed(flow.fromSide, IOError(errnoCode: ENOMEM, call: "tunnel buffer")), reset: true)
                    return .failed
                }
                chunk.base.copyMemory(from: loop.scratch.baseAddress! + sent, byteCount: left)
                flow.buffer = chunk
                flow.head = 0
                flow.pending = left
            }
            if n == room && options.transfer == .auto { flow.splicing = true }
            return n == room ? .full : .some
        case .splice:
            if flow.pipe == nil {
                guard let pipe = loop.tunnelPipes.take(size: limit) else {
                    finish(.failed(flow.fromSide, IOError(errnoCode: errno, call: "pipe2")), reset: true)
                    return .failed
                }
                flow.pipe = pipe
            }
            let pipe = flow.pipe!
            let n = sy_splice(flow.from, pipe.write, min(limit, pipe.capacity))
            if n < 0 {
                let e = errno
                if e == EAGAIN || e == EINTR {
                    releasePipeIfEmpty(flow)
                    return .none
                }
                finish(.failed(flow.fromSide, IOError(errnoCode: e, call: "splice")), reset: true)
                return .failed
            }
            if n == 0 {
                flow.eof = true
                releasePipeIfEmpty(flow)
                return .none
            }
            flow.pending = n
            if n < Self.autoCopyBelow && options.transfer == .auto { flow.splicing = false }
            return n == min(limit, pipe.capacity) ? .full : .some
        }
    }

    /// Writes (or splices) what the flow holds to its destination. False when the tunnel ended.
    private func deliver(_ flow: Flow) -> Bool {
        while flow.pending > 0 {
            let n: Int
            if let pipe = flow.pipe {
                let r = sy_splice(pipe.read, flow.to, flow.pending)
                if r < 0 {
                    let e = errno
                    if e == EAGAIN { return true }
                    if e == EINTR { continue }
                    finish(.failed(flow.toSide, IOError(errnoCode: e, call: "splice")), reset: true)
                    return false
                }
                n = r
            } else {
                let chunk = flow.buffer!
                let result: IOResult<Int>
                do {
                    result = try Posix.write(flow.to, chunk.base + flow.head, flow.pending)
                } catch {
                    finish(.failed(flow.toSide, error), reset: true)
                    return false
                }
                guard case .processed(let m) = result else { return true }
                n = m
                flow.head += m
            }
            flow.pending -= n
            flow.moved &+= UInt64(n)
        }
        if let chunk = flow.buffer {
            loop.pool.release(chunk)
            flow.buffer = nil
            flow.head = 0
        }
        releasePipeIfEmpty(flow)
        return true
    }

    private func releasePipeIfEmpty(_ flow: Flow) {
        guard flow.pending == 0, let pipe = flow.pipe else { return }
        flow.pipe = nil
        loop.tunnelPipes.give(pipe)
    }

    /// Reads a side while its bytes have room and it has not ended; watches a side for writability while bytes
    /// wait for it. A side done both ways (its FIN read, ours sent) is not watched any more: its hang-up would be
    /// reported on every wait until the other side finishes. Nor is a side that hung up while it was not read
    /// (backpressure), until it may be read again.
    private func updateInterest() {
        var client: IOInterest = []
        var server: IOInterest = []
        if !up.eof && up.pending == 0 && preamble.isEmpty { client.insert(.read) }  // the preamble goes first
        if down.pending > 0 { client.insert(.write) }
        if !down.eof && down.pending == 0 { server.insert(.read) }
        if up.pending > 0 || preambleSent < preamble.count { server.insert(.write) }
        watch(.client, client, done: up.eof && down.shut)
        if !ended { watch(.server, server, done: down.eof && up.shut) }
    }

    private func watch(_ side: TunnelSide, _ wanted: IOInterest, done: Bool) {
        let fd = side == .client ? up.from : down.from
        let handler = side == .client ? clientHandler : serverHandler
        let current = side == .client ? clientInterest : serverInterest
        if handler != nil {
            if done {
                loop.unregister(fd: fd)
                setWatched(side, nil, .none)
            } else if wanted.isEmpty && current != wanted && (side == .client ? up.eof : down.eof) {
                // Its FIN read and nothing to write to it: out of the set, which costs what a change to no events
                // would and saves the removal at the close; back when bytes wait for it. (Not for a pause of
                // backpressure: a change is cheaper than a removal and an add.)
                park(side)
            } else if wanted != current {
                loop.modify(fd: fd, interest: wanted)
                setWatched(side, handler, wanted)
            }
        } else if !done && parked.contains(side) && !wanted.isEmpty {
            parked.remove(side)
            let again = SideHandler(tunnel: self, side: side)
            do {
                try loop.register(fd: fd, interest: wanted, handler: again)
                setWatched(side, again, wanted)
            } catch {
                finish(.failed(side, IOError(errnoCode: EBADF, call: "register")), reset: true)
            }
        }
    }

    private func setWatched(_ side: TunnelSide, _ handler: SideHandler?, _ interest: IOInterest) {
        if side == .client {
            clientHandler = handler
            clientInterest = interest
        } else {
            serverHandler = handler
            serverInterest = interest
        }
    }

    /// A side hung up while it was not read, or its FIN was read with nothing to write to it: not watched until it
    /// may be read, or has bytes waiting for it, again (`updateInterest`).
    private func park(_ side: TunnelSide) {
        let fd = side == .client ? up.from : down.from
        guard (side == .client ? clientHandler : serverHandler) != nil else { return }
        loop.unregister(fd: fd)
        setWatched(side, nil, .none)
        parked.insert(side)
    }

    private func armIdleTimer(after ns: UInt64) {
        idleTimer = loop.schedule(after: .nanoseconds(Int64(clamping: ns))) { [weak self] in
            guard let self, !ended, let timeout = options.idleTimeout?.nanosecondsSaturated else { return }
            idleTimer = nil
            let silent = sy_monotonic_ns() &- lastActivity
            if silent >= timeout {
                finish(.idleTimeout, reset: true)
            } else {
                armIdleTimer(after: timeout - silent)
            }
        }
    }

    /// Closes both sockets (reset when asked: the peers learn the transfer was cut), releases what is in flight,
    /// and calls `onEnd`. Once.
    private func finish(_ end: TunnelEnd, reset: Bool) {
        if ended { return }
        ended = true
        idleTimer?.cancel()
        idleTimer = nil
        // Unregistered before the close even though the close would take them out of the epoll set: a descriptor
        // another process holds for a moment (a child between fork and exec) would stay in it, and its events would
        // reach whatever socket gets its number next.
        if clientHandler != nil { loop.unregister(fd: up.from) }
        if serverHandler != nil { loop.unregister(fd: down.from) }
        clientHandler = nil
        serverHandler = nil
        for flow in [up, down] {
            if reset { Self.setResetOnClose(flow.from) }
            Posix.close(flow.from)
            releaseInFlight(flow)
        }
        onEnd(self, TunnelOutcome(end: end, clientToServerBytes: up.moved, serverToClientBytes: down.moved))
    }

    private func releaseInFlight(_ flow: Flow) {
        if let chunk = flow.buffer { loop.pool.release(chunk) }
        flow.buffer = nil
        if let pipe = flow.pipe {
            // A pipe with bytes still in it is not reused.
            if flow.pending == 0 { loop.tunnelPipes.give(pipe) } else { pipe.close() }
        }
        flow.pipe = nil
        flow.pending = 0
    }

    private static func setResetOnClose(_ fd: Int32) {
        var option = linger(l_onoff: 1, l_linger: 0)
        _ = setsockopt(fd, SOL_SOCKET, SO_LINGER, &option, socklen_t(MemoryLayout<linger>.size))
    }

    /// The loop stopped with the tunnel open: it ends `.closed` (the loop has forgotten its handlers already).
    fileprivate func loopStopped() {
        clientHandler = nil
        serverHandler = nil
        finish(.closed, reset: false)
    }
}

/// One direction of a tunnel. Loop thread only.
private final class Flow {
    let from: Int32
    let to: Int32
    let fromSide: TunnelSide
    let toSide: TunnelSide
    /// Bytes read and not yet delivered (in `buffer` from `head`, or in `pipe`).
    // @exclusivity(unchecked): loop thread only, short accesses.
    @exclusivity(unchecked) var pending = 0
    @exclusivity(unchecked) var buffer: Chunk?
    @exclusivity(unchecked) var head = 0
    @exclusivity(unchecked) var pipe: TunnelPipe?
    /// `from` sent its FIN.
    @exclusivity(unchecked) var eof = false
    /// The FIN was passed on to `to`.
    @exclusivity(unchecked) var shut = false
    @exclusivity(unchecked) var moved: UInt64 = 0
    /// Reads splice into a pipe (else they copy through the scratch area).
    @exclusivity(unchecked) var splicing: Bool

    init(from: Int32, to: Int32, fromSide: TunnelSide, toSide: TunnelSide, splicing: Bool) {
        self.from = from
        self.to = to
        self.fromSide = fromSide
        self.toSide = toSide
        self.splicing = splicing
    }
}

/// Hands one socket's events to its tunnel.
private final class SideHandler: EventHandler {
    let tunnel: TCPTunnel
    let side: TunnelSide
    init(tunnel: TCPTunnel, side: TunnelSide) {
        self.tunnel = tunnel
        self.side = side
    }
    func handleEvents(_ events: UInt32) { tunnel.handle(side, events) }
    func loopDidStop() { tunnel.loopStopped() }
}
