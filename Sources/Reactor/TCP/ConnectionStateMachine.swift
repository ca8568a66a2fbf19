/// The life of a TCP connection, muduo style (kConnecting, kConnected, kDisconnecting, kDisconnected), as a value:
/// `TCPConnection` tells it what happened and performs the `Action` it returns. No I/O and no clock, so every
/// transition is tested without sockets. Loop thread only (it lives inside a connection).
///
/// ```
///  connecting --registered--> connected
///  connected --peerClosed(output empty), closeNow, abort-----------------------------------> closed
///  connected --peerClosed(output queued)--> closingAfterFlush(peerClosed: true) --drained--> closed
///  connected --closeGracefully(output queued)--> closingAfterFlush(peerClosed: false) --drained--> lingering
///  connected --closeGracefully(output empty)--------------------------------------------> lingering
///  lingering --closeNow (the peer's FIN, the linger timeout, an error)--------------------> closed
/// ```
///
/// While the data callback runs (`beginDispatch` ... `endDispatch`) closing is deferred: the connection never goes
/// away under its own callback, and `endDispatch` returns the `.close` then. `.close` is returned exactly once in a
/// connection's life, however many ways (peer FIN, reset, error, local close) it ends at once.
struct ConnectionStateMachine {
    enum State: Equatable {
        case connecting
        case connected
        /// Flushing queued output before closing; reading stopped. `peerClosed`: the peer's FIN arrived.
        case closingAfterFlush(peerClosed: Bool)
        /// Output flushed and our FIN sent; discarding input until the peer's FIN (or the linger timeout).
        case lingering
        case closed
    }

    /// What the connection does next.
    enum Action: Equatable {
        /// Nothing now.
        case none
        /// Watch for writability only (reading stops) until the queued output is written.
        case flush
        /// Output is written: send our FIN (shutdown SHUT_WR), read only to see the peer's, start the linger timer.
        case halfClose
        /// Close now: unregister, close the descriptor, return the buffers, fire `onClose`. Returned once.
        case close
    }

    private(set) var state = State.connecting
    /// True while the data callback runs.
    private(set) var isDispatching = false
    /// A close was asked for while the data callback ran; `endDispatch` returns it.
    private(set) var isClosePending = false

    /// Open for sending and reading.
    @inline(__always)
    var isConnected: Bool {
        if case .connected = state { return true }
        return false
    }

    @inline(__always)
    var isClosed: Bool {
        if case .closed = state { return true }
        return false
    }

    @inline(__always)
    var isLingering: Bool {
        if case .lingering = state { return true }
        return false
    }

    /// Flushing its output before it closes (either half-close).
    var isClosingAfterFlush: Bool {
        if case .closingAfterFlush = state { return true }
        return false
    }

    /// The descriptor is registered with the loop: connecting -> connected.
    mutating func registered() {
        precondition(state == .connecting, "registered twice")
        state = .connected
    }

    /// The loop would not watch the descriptor: closed, with no callback (none fired yet).
    mutating func registrationFailed() {
        state = .closed
    }

    /// Read returned 0 (the peer's FIN) while connected. With nothing queued the connection closes; otherwise what
    /// was queued is still delivered first (half-close).
    mutating func peerClosed(outputEmpty: Bool) -> Action {
        guard isConnected else { return .none }
        if outputEmpty { return closeNow() }
        state = .closingAfterFlush(peerClosed: true)
        return .flush
    }

    /// The output queue became empty. Closes (the peer has closed) or half-closes (a local graceful close); in any
    /// other state nothing follows from it.
    mutating func outputDrained() -> Action {
        guard case .closingAfterFlush(let peerClosed) = state else { return .none }
        if peerClosed { return closeNow() }
        state = .lingering
        return .halfClose
    }

    /// A local graceful close (`close()`): flush, then half-close. Only a connected connection starts one.
    mutating func closeGracefully(outputEmpty: Bool) -> Action {
        guard isConnected else { return .none }
        if outputEmpty {
            state = .lingering
            return .halfClose
        }
        state = .closingAfterFlush(peerClosed: false)
        return .flush
    }

    /// Close at once, discarding queued output (`forceClose()`, a failed write). During the data callback nothing
    /// more is sent or flushed, and the close follows when the callback returns.
    mutating func abort() -> Action {
        if isClosed { return .none }
        if isDispatching {
            isClosePending = true
            state = .closingAfterFlush(peerClosed: true)
            return .none
        }
        state = .closed
        return .close
    }

    /// The connection is over (reset, error, hang-up, the peer's FIN while lingering, the linger timeout): close
    /// now, or when the data callback returns. Nothing once closed.
    mutating func closeNow() -> Action {
        if isClosed { return .none }
        if isDispatching {
            isClosePending = true
            return .none
        }
        state = .closed
        return .close
    }

    /// The data callback starts.
    @inline(__always)
    mutating func beginDispatch() {
        isDispatching = true
    }

    /// The data callback returned: the close asked for meanwhile, if any.
    @inline(__always)
    mutating func endDispatch() -> Action {
        isDispatching = false
        guard isClosePending else { return .none }
        isClosePending = false
        return closeNow()
    }
}
