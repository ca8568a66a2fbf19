#if canImport(Glibc)
import Glibc
#endif
import CSwitchyardLinux
import Logging
import Synchronization

/// One TCP connection, bound to one loop.
///
/// Loop thread only, except where a member says "Safe to call from any thread" (`send(_: [UInt8])`, `close()`,
/// `forceClose()`, the identity properties). The loop-only methods that have an any-thread counterpart say so in
/// their names (`sendInLoop`), so which overload a call picks never decides its thread contract.
///
/// Reads land in the loop's scratch area; an unconsumed tail moves into a pooled chunk owned by the connection, so
/// an idle connection holds no buffer. Writes go straight to the socket when nothing is queued; only the remainder
/// is queued. When the queue reaches the high-water mark the connection stops reading from the peer until it drains
/// to the low mark. How it closes is `ConnectionStateMachine`'s to decide.
public final class TCPConnection: @unchecked Sendable, EventHandler, CustomStringConvertible {
    // @unchecked Sendable: the mutable state is touched only on `loop`'s thread; the methods callable from other
    // threads hop there with `loop.execute`.

    /// Unique within the process.
    public let id: UInt64
    public let loop: EventLoop
    public let peerAddress: SocketAddress
    public let localAddress: SocketAddress
    let fd: Int32
    /// The application's callbacks; replaced by no-ops once `onClose` has run, so what they captured (often this
    /// connection, through the application's own state) is not kept alive by the connection. Loop thread only.
    @exclusivity(unchecked) private var callbacks: ConnectionCallbacks
    let options: ConnectionOptions

    // @exclusivity(unchecked): every such property below is loop thread only, and no access is held across a callback.
    /// Free slot for the application (a session, a user id). Loop thread only.
    @exclusivity(unchecked) public var context: Any?
    /// Slot for the framework's own per-connection state (the messaging layer's session). Loop thread only.
    @exclusivity(unchecked) package var protocolState: AnyObject?

    /// Bytes read from the peer. Loop thread only.
    @exclusivity(unchecked) public private(set) var bytesRead: UInt64 = 0
    /// Bytes the socket accepted from us. Loop thread only.
    @exclusivity(unchecked) public internal(set) var bytesWritten: UInt64 = 0
    /// Largest queued-output size this connection ever had. Loop thread only.
    @exclusivity(unchecked) public private(set) var peakQueuedOutputBytes = 0
    /// Bytes waiting in the output queue. Loop thread only.
    public var queuedOutputBytes: Int { output.bytes }
    /// Bytes of buffer memory the connection holds now (its input tail's chunk and its output chunks). Loop thread
    /// only.
    public var bufferedBytes: Int { (input?.capacity ?? 0) + output.capacityBytes }
    /// Bytes received and kept, not yet consumed by the data callback (a partial message). Loop thread only.
    public var unconsumedInputBytes: Int { inEnd - inStart }
    /// The error that closed the connection, if one did. Loop thread only.
    @exclusivity(unchecked) public private(set) var closeReason: Error?
    /// True while reading is paused by the high-water mark. Loop thread only.
    @exclusivity(unchecked) public private(set) var isReadingPaused = false
    /// False while the application has paused reading (`setReadingEnabled(false)`). Loop thread only.
    @exclusivity(unchecked) public private(set) var isReadingEnabled = true
    /// When bytes last arrived (the loop's `wakeTime`, monotonic ns). Loop thread only.
    @exclusivity(unchecked) public private(set) var lastReceiveTime: UInt64 = 0
    /// When the application last sent (the loop's `wakeTime`, monotonic ns). Loop thread only.
    @exclusivity(unchecked) public internal(set) var lastSendTime: UInt64 = 0

    /// Connecting, connected, closing, closed: the transitions and what each one takes.
    @exclusivity(unchecked) var machine = ConnectionStateMachine()
    @exclusivity(unchecked) private var interest: IOInterest = .none
    @exclusivity(unchecked) private var input: Chunk?
    @exclusivity(unchecked) private var inStart = 0
    @exclusivity(unchecked) private var inEnd = 0
    @exclusivity(unchecked) var output = OutputQueue()
    @exclusivity(unchecked) private var lingerTimer: TimerHandle?
    @exclusivity(unchecked) private var idleTimer: TimerHandle?
    /// Called after `onClose` by the owner (server registry, client reconnect). Loop thread only.
    @exclusivity(unchecked) var onClosedByOwner: ((TCPConnection) -> Void)?

    private static let nextID = Atomic<UInt64>(1)
    static func makeID() -> UInt64 { nextID.wrappingAdd(1, ordering: .relaxed).oldValue }

    init(
        id: UInt64, fd: Int32, loop: EventLoop, peer: SocketAddress, local: SocketAddress,
        callbacks: ConnectionCallbacks, options: ConnectionOptions
    ) {
        self.id = id
        self.fd = fd
        self.loop = loop
        self.peerAddress = peer
        self.localAddress = local
        self.callbacks = callbacks
        self.options = options
    }

    public var description: String { "connection \(id) \(peerAddress) -> \(localAddress)" }

    /// True until the connection starts closing. Loop thread only.
    public var isActive: Bool { machine.isConnected }

    /// Registers with the loop and fires `onConnect`. Loop thread only. On failure (select's descriptor limit,
    /// for instance) the descriptor is closed, no callback fires, and the error is thrown.
    func establish() throws {
        loop.assertInLoopThread()
        if options.noDelay { try? Posix.setOption(fd, Int32(IPPROTO_TCP), TCP_NODELAY, 1) }
        do {
            try loop.register(fd: fd, interest: .read, handler: self)
        } catch {
            machine.registrationFailed()
            Posix.close(fd)
            throw error
        }
        interest = .read
        machine.registered()
        lastReceiveTime = loop.wakeTime
        lastSendTime = loop.wakeTime
        if let timeout = options.idleTimeout { armIdleTimer(after: timeout.nanosecondsSaturated) }
        callbacks.onConnect(self)
    }

    // MARK: Events

    /// Handles readiness. Loop thread only.
    func handleEvents(_ bits: UInt32) {
        loop.assertInLoopThread()
        if machine.isClosed { return }
        if bits & PollBits.error != 0 {
            let err = Posix.socketError(fd)
            closeNow(reason: err != 0 ? IOError(errnoCode: err, call: "socket") : nil)
            return
        }
        if interest.contains(.read) && bits & (PollBits.read | PollBits.readHangup | PollBits.hangup) != 0 {
            handleRead()
        } else if bits & PollBits.hangup != 0 {
            // Both directions are down and we are not reading: nothing more can be delivered.
            if output.isEmpty { closeNow(reason: nil); return }
            handleWrite()
            if machine.isClosed { return }
            if !output.isEmpty { closeNow(reason: nil); return }
        }
        if machine.isClosed { return }
        if bits & PollBits.write != 0 && interest.contains(.write) {
            handleWrite()
        }
    }

    private func handleRead() {
        var rounds = 0
        while true {
            if machine.isLingering {
                drainWhileLingering()
                return
            }
            guard machine.isConnected, !isReadingPaused, isReadingEnabled else { return }
            // Never read more than the output queue could still take, so an echoing peer cannot push the queue
            // past the high-water mark.
            let limit = output.isEmpty ? Int.max : max(1, options.highWaterMark - output.bytes)
            let requested: Int
            let result: IOResult<Int>
            do {
                if input == nil {
                    requested = min(loop.scratch.count, limit)
                    result = try Posix.read(fd, loop.scratch.baseAddress!, requested)
                } else {
                    try reserveInputSpace()
                    requested = min(input!.capacity - inEnd, limit)
                    result = try Posix.read(fd, input!.base + inEnd, requested)
                }
            } catch {
                closeNow(reason: error)
                return
            }
            guard case .processed(let n) = result else { return }
            if n == 0 {
                handlePeerClosed()
                return
            }
            bytesRead &+= UInt64(n)
            lastReceiveTime = loop.wakeTime
            if input == nil {
                let consumed = dispatch(UnsafeRawPointer(loop.scratch.baseAddress!), n)
                guard machine.isConnected else { continue }  // closing: unconsumed input is moot
                if consumed < n {
                    keepTail(loop.scratch.baseAddress! + consumed, n - consumed)
                    if machine.isClosed { return }
                }
            } else {
                let carried = inEnd - inStart
                inEnd += n
                let consumed = dispatch(UnsafeRawPointer(input!.base + inStart), inEnd - inStart, carried: carried)
                guard machine.isConnected else {
                    if machine.isClosed { return }
                    releaseInput()
                    continue
                }
                inStart += consumed
                if inStart == inEnd {
                    releaseInput()
                } else if input!.capacity > BufferPool.shrinkAboveBytes && inEnd - inStart <= input!.capacity / 4 {
                    shrinkInput()
                }
            }
            rounds += 1
            // Read again only for a frame still incomplete. When everything read was consumed, another read
            // usually finds the socket empty (a peer that waits for its reply, like an echo client, has sent
            // nothing more): a wasted syscall per message. The poller is level-triggered, so bytes still
            // queued are reported on the next wait.
            if n < requested || input == nil || rounds >= 4 { return }
        }
    }

    /// Hands `count` bytes at `base` to the data callback; returns how many it consumed.
    @inline(__always)
    private func dispatch(_ base: UnsafeRawPointer, _ count: Int, carried: Int = 0) -> Int {
        var view = InboundBytes(base: base, count: count, carriedBytes: carried)
        machine.beginDispatch()
        callbacks.onData(self, &view)
        // A close asked for during the callback happens now (its reason is recorded already).
        perform(machine.endDispatch())
        return view.readerIndex
    }

    private func keepTail(_ p: UnsafeRawPointer, _ n: Int) {
        do {
            let chunk = try loop.pool.allocate(minimumCapacity: max(n * 2, 4096))
            chunk.base.copyMemory(from: p, byteCount: n)
            input = chunk
            inStart = 0
            inEnd = n
        } catch {
            closeNow(reason: error)
        }
    }

    /// Makes room for at least 4 KiB more at the end of the input chunk: compact, or move to a bigger chunk.
    private func reserveInputSpace() throws {
        guard let chunk = input else { return }
        if chunk.capacity - inEnd >= 4096 { return }
        let live = inEnd - inStart
        if inStart > 0 && chunk.capacity - live >= max(4096, chunk.capacity / 4) {
            chunk.base.copyMemory(from: chunk.base + inStart, byteCount: live)  // memmove semantics
            inStart = 0
            inEnd = live
            return
        }
        moveInput(from: chunk, to: try loop.pool.allocate(minimumCapacity: chunk.capacity * 2))
    }

    /// Moves the live input bytes out of a big, mostly consumed chunk into a smaller one (`shrinkAboveBytes`).
    private func shrinkInput() {
        guard let chunk = input else { return }
        let live = inEnd - inStart
        guard let smaller = try? loop.pool.allocate(minimumCapacity: max(live * 2, 4096)) else { return }
        moveInput(from: chunk, to: smaller)
    }

    /// Moves the live input bytes to the start of `other`, which becomes the input chunk; `chunk` goes back to the
    /// pool.
    private func moveInput(from chunk: Chunk, to other: Chunk) {
        let live = inEnd - inStart
        other.base.copyMemory(from: chunk.base + inStart, byteCount: live)
        loop.pool.release(chunk)
        input = other
        inStart = 0
        inEnd = live
    }

    private func releaseInput() {
        if let chunk = input { loop.pool.release(chunk) }
        input = nil
        inStart = 0
        inEnd = 0
    }

    /// The peer's FIN. Half-close: the peer will send no more, but what we queued for it is still delivered.
    private func handlePeerClosed() {
        perform(machine.peerClosed(outputEmpty: output.isEmpty))
    }

    private func handleWrite() {
        if !output.isEmpty {
            do {
                let n = try output.flush(fd: fd, pool: loop.pool)
                bytesWritten &+= UInt64(n)
            } catch {
                closeNow(reason: error)
                return
            }
        }
        if output.isEmpty {
            if machine.isClosingAfterFlush {
                perform(machine.outputDrained())
                return
            }
            if interest.contains(.write) { setInterest(interest.subtracting(.write)) }
        }
        if isReadingPaused && output.bytes <= options.lowWaterMark {
            isReadingPaused = false
            if machine.isConnected, isReadingEnabled { setInterest(interest.union(.read)) }
        }
    }

    private func setInterest(_ newInterest: IOInterest) {
        if newInterest == interest { return }
        interest = newInterest
        loop.modify(fd: fd, interest: newInterest)
    }

    // MARK: Sending

    /// Sends bytes. Safe to call from any thread (off the loop the bytes are handed over with `execute`).
    /// Returns false if the connection is no longer open for sending (checked on the loop thread only).
    @discardableResult
    public func send(_ bytes: [UInt8]) -> Bool {
        if loop.inLoopThread {
            return bytes.withUnsafeBytes { sendInLoop($0) }
        }
        loop.execute { [self] in _ = bytes.withUnsafeBytes { sendInLoop($0) } }
        return true
    }

    /// Sends bytes. Loop thread only. The bytes are copied if the socket does not take them at once.
    @discardableResult
    public func sendInLoop(_ bytes: UnsafeRawBufferPointer) -> Bool {
        loop.assertInLoopThread()
        guard machine.isConnected else { return false }
        if bytes.count == 0 { return true }
        lastSendTime = loop.wakeTime
        var written = 0
        if output.isEmpty {
            do {
                if case .processed(let n) = try Posix.write(fd, bytes.baseAddress!, bytes.count) { written = n }
            } catch {
                failWrite(error)
                return false
            }
            bytesWritten &+= UInt64(written)
            if written == bytes.count { return true }
        }
        return enqueue(UnsafeRawBufferPointer(rebasing: bytes[written...]))
    }

    /// Sends two pieces (a header and a body) as one write when possible. Loop thread only.
    @discardableResult
    public func sendInLoop(_ first: UnsafeRawBufferPointer, _ second: UnsafeRawBufferPointer) -> Bool {
        loop.assertInLoopThread()
        guard machine.isConnected else { return false }
        if second.count == 0 { return sendInLoop(first) }
        if first.count == 0 { return sendInLoop(second) }
        lastSendTime = loop.wakeTime
        var written = 0
        if output.isEmpty {
            var iov = (
                iovec(iov_base: UnsafeMutableRawPointer(mutating: first.baseAddress!), iov_len: first.count),
                iovec(iov_base: UnsafeMutableRawPointer(mutating: second.baseAddress!), iov_len: second.count)
            )
            do {
                let r = try withUnsafeMutableBytes(of: &iov) { raw in
                    try Posix.writev(fd, raw.baseAddress!.assumingMemoryBound(to: iovec.self), 2)
                }
                if case .processed(let n) = r { written = n }
            } catch {
                failWrite(error)
                return false
            }
            bytesWritten &+= UInt64(written)
            if written == first.count + second.count { return true }
        }
        if written < first.count {
            guard enqueue(UnsafeRawBufferPointer(rebasing: first[written...])) else { return false }
            return enqueue(second)
        }
        return enqueue(UnsafeRawBufferPointer(rebasing: second[(written - first.count)...]))
    }

    func enqueue(_ rest: UnsafeRawBufferPointer) -> Bool {
        do {
            try output.append(rest, pool: loop.pool)
        } catch {
            failWrite(error)
            return false
        }
        if output.bytes > peakQueuedOutputBytes { peakQueuedOutputBytes = output.bytes }
        var newInterest = interest.union(.write)
        if output.bytes >= options.highWaterMark && !isReadingPaused {
            isReadingPaused = true
            newInterest.remove(.read)
        }
        setInterest(newInterest)
        return true
    }

    /// Pauses or resumes reading from the peer (flow control for consumers slower than the network; the peer's
    /// TCP window fills and it slows down). Loop thread only.
    public func setReadingEnabled(_ enabled: Bool) {
        loop.assertInLoopThread()
        guard enabled != isReadingEnabled else { return }
        isReadingEnabled = enabled
        guard machine.isConnected else { return }
        if enabled && !isReadingPaused {
            setInterest(interest.union(.read))
        } else if !enabled {
            setInterest(interest.subtracting(.read))
        }
    }

    /// A write failed: close at once, or (during the data callback) send no more and close when it returns.
    func failWrite(_ error: Error) {
        if !machine.isClosed { closeReason = error }
        perform(machine.abort())
    }

    // MARK: Closing

    /// Closes after flushing queued output: stop reading, flush, send FIN, wait (bounded) for the peer's FIN so
    /// no reset destroys data in flight, then close. Safe to call from any thread.
    public func close() {
        loop.executeInLoop { [self] in closeGracefullyInLoop() }
    }

    /// Closes at once, discarding queued output. Safe to call from any thread.
    public func forceClose() {
        loop.executeInLoop { [self] in perform(machine.abort()) }
    }

    /// `close()` on the loop. Loop thread only.
    func closeGracefullyInLoop() {
        loop.assertInLoopThread()
        perform(machine.closeGracefully(outputEmpty: output.isEmpty))
    }

    /// Does what the state machine asked for.
    @inline(__always)
    private func perform(_ action: ConnectionStateMachine.Action) {
        switch action {
        case .none: break
        case .flush: setInterest(.write)
        case .halfClose: startLingering()
        case .close: tearDown()
        }
    }

    /// Checks for silence `ns` from now; re-arms for the rest of the timeout while bytes keep arriving.
    private func armIdleTimer(after ns: UInt64) {
        idleTimer = loop.schedule(after: .nanoseconds(Int64(clamping: ns))) { [weak self] in
            guard let self, let timeout = options.idleTimeout?.nanosecondsSaturated else { return }
            idleTimer = nil
            guard machine.isConnected else { return }
            let silent = sy_monotonic_ns() &- lastReceiveTime
            if silent >= timeout {
                closeNow(reason: ReactorError.idleTimeout)
            } else {
                armIdleTimer(after: timeout - silent)
            }
        }
    }

    /// Our FIN, then wait (bounded) for the peer's; the machine is lingering already.
    private func startLingering() {
        try? Posix.shutdown(fd, Int32(SHUT_WR))  // fails only when the peer is gone, which the read that follows sees
        if input != nil && !machine.isDispatching { releaseInput() }
        setInterest(.read)
        lingerTimer = loop.schedule(after: options.lingerTimeout) { [self] in
            lingerTimer = nil
            closeNow(reason: nil)
        }
    }

    private func drainWhileLingering() {
        while true {
            let r: IOResult<Int>
            do {
                r = try Posix.read(fd, loop.scratch.baseAddress!, loop.scratch.count)
            } catch {
                closeNow(reason: nil)
                return
            }
            guard case .processed(let n) = r else { return }
            if n == 0 {
                closeNow(reason: nil)
                return
            }
        }
    }

    /// Closes now (or, during the data callback, when it returns), exactly once. Loop thread only.
    func closeNow(reason: Error?) {
        loop.assertInLoopThread()
        if machine.isClosed { return }
        closeReason = reason ?? closeReason
        perform(machine.closeNow())
    }

    /// What `.close` takes: unregister, close the descriptor, return the buffers, fire `onClose`. Once.
    private func tearDown() {
        lingerTimer?.cancel()
        lingerTimer = nil
        idleTimer?.cancel()
        idleTimer = nil
        loop.unregister(fd: fd)
        Posix.close(fd)
        releaseInput()
        output.releaseAll(pool: loop.pool)
        interest = .none
        // The owner first (the server's registry forgets it, a client schedules its reconnect), then the user.
        let owner = onClosedByOwner
        onClosedByOwner = nil
        owner?(self)
        callbacks.onClose(self)
        // Never called again: let go of what they hold (a cycle through them would keep this connection forever).
        callbacks = ConnectionCallbacks()
    }

    /// The loop has stopped with this connection open (its group shut down before its server): it closes now,
    /// discarding queued output, with the usual close callbacks. Loop thread (the loop's last act).
    func loopDidStop() {
        closeNow(reason: ReactorError.loopStopped)
    }
}
