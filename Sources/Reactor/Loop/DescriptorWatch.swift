/// The readiness of a descriptor the loop does not own (a database library's socket), handed to a closure on the
/// loop's thread. The watch never reads, writes or closes the descriptor: its owner does, and cancels the watch
/// before it closes it.
///
///     let watch = try DescriptorWatch(fd: PQsocket(conn), interest: .read, loop: loop) { readable, writable in
///         ...   // PQconsumeInput, PQflush
///     }
///     watch.interest = [.read, .write]
///     watch.cancel()
///
/// Loop thread only (create it on the loop's thread too).
public final class DescriptorWatch: EventHandler {
    /// The watched descriptor.
    public let fd: Int32
    /// The loop that reports its readiness.
    public let loop: EventLoop
    private var handler: ((_ readable: Bool, _ writable: Bool) -> Void)?
    private var current: IOInterest

    /// Starts watching `fd` for `interest`; `onEvent` runs on the loop's thread with what is ready (an error or a
    /// hang-up counts as readable, so that the owner's next read sees it). Throws the poller's error.
    public init(fd: Int32, interest: IOInterest, loop: EventLoop,
                onEvent: @escaping (_ readable: Bool, _ writable: Bool) -> Void) throws {
        self.fd = fd
        self.loop = loop
        self.handler = onEvent
        self.current = interest
        try loop.register(fd: fd, interest: interest, handler: self)
    }

    /// What the descriptor is watched for. Loop thread only.
    public var interest: IOInterest {
        get { current }
        set {
            guard newValue != current, handler != nil else { return }
            current = newValue
            loop.modify(fd: fd, interest: newValue)
        }
    }

    /// `true` until ``cancel()`` (or the loop stopped for good).
    public var isActive: Bool { handler != nil }

    /// Stops watching (the descriptor stays open). A no-op after the first call. Loop thread only.
    public func cancel() {
        guard handler != nil else { return }
        handler = nil
        loop.unregister(fd: fd)
    }

    func handleEvents(_ events: UInt32) {
        guard let handler else { return }
        let readable = events & (PollBits.read | PollBits.error | PollBits.hangup | PollBits.readHangup) != 0
        handler(readable, events & PollBits.write != 0)
    }

    func loopDidStop() { handler = nil }
}
