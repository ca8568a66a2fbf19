import Reactor

/// The echo service: every byte a client sends comes back to it, in order.
public enum EchoService {
    /// Callbacks that write back whatever arrives (straight from the loop's scratch area).
    public static func callbacks(
        onConnect: @escaping @Sendable (TCPConnection) -> Void = { _ in },
        onClose: @escaping @Sendable (TCPConnection) -> Void = { _ in }
    ) -> ConnectionCallbacks {
        ConnectionCallbacks(
            onConnect: onConnect,
            onData: { connection, bytes in
                connection.sendInLoop(bytes.consumeAll())
            },
            onClose: onClose
        )
    }
}
