/// What a server or client does with its connections. All callbacks run on the connection's loop.
public struct ConnectionCallbacks: Sendable {
    /// The connection is established and registered on its loop.
    public var onConnect: @Sendable (TCPConnection) -> Void
    /// Bytes arrived. Consume what you handled; the rest is kept and shown again with the next bytes.
    public var onData: @Sendable (TCPConnection, inout InboundBytes) -> Void
    /// The connection closed (peer FIN, reset, error, or a local close). Fires exactly once per connection
    /// that fired `onConnect`, after its descriptor is closed and its buffers are back in the pool.
    public var onClose: @Sendable (TCPConnection) -> Void

    public init(
        onConnect: @escaping @Sendable (TCPConnection) -> Void = { _ in },
        onData: @escaping @Sendable (TCPConnection, inout InboundBytes) -> Void = { _, bytes in bytes.consumeAll() },
        onClose: @escaping @Sendable (TCPConnection) -> Void = { _ in }
    ) {
        self.onConnect = onConnect
        self.onData = onData
        self.onClose = onClose
    }
}

/// Per-connection limits and socket options.
public struct ConnectionOptions: Sendable {
    /// Queued output at or above this stops reading from the peer until the queue drains below `lowWaterMark`.
    public var highWaterMark: Int
    /// Reading resumes once queued output falls to this.
    public var lowWaterMark: Int
    /// Disable Nagle's algorithm (on by default: this is a request/response framework).
    public var noDelay: Bool
    /// After a local close has flushed, how long to wait for the peer's FIN before closing anyway.
    public var lingerTimeout: Duration
    /// A connection that receives nothing for this long is closed (`closeReason` `ReactorError.idleTimeout`). One
    /// timer per connection, which fires at most once per timeout. Off when nil (the default; `FramedServer` has
    /// its own, heartbeat-aware idle and head timeouts).
    public var idleTimeout: Duration?

    public init(
        highWaterMark: Int = 4 * 1024 * 1024,
        lowWaterMark: Int = 1024 * 1024,
        noDelay: Bool = true,
        lingerTimeout: Duration = .seconds(5),
        idleTimeout: Duration? = nil
    ) {
        self.highWaterMark = max(1, highWaterMark)
        self.lowWaterMark = min(max(0, lowWaterMark), self.highWaterMark)
        self.noDelay = noDelay
        self.lingerTimeout = lingerTimeout
        self.idleTimeout = idleTimeout
    }
}
