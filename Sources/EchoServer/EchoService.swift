import Logging
import Reactor

/// The echo service: every byte a client sends comes back to it, in order.
public enum EchoService {
    /// An echo server on `group`: at most `maxConnections`, a connection's echo queued up to `highWaterKiB` before
    /// the server stops reading from it (resumed at a quarter), closed after `idleTimeoutSeconds` of silence (0:
    /// never). Not started.
    public static func server(group: EventLoopGroup, host: String, port: Int, maxConnections: Int, highWaterKiB: Int,
                              idleTimeoutSeconds: Int, logger: Logger) -> TCPServer {
        TCPServer(
            group: group,
            configuration: ServerConfiguration(
                host: host, port: port, maxConnections: maxConnections,
                connection: ConnectionOptions(highWaterMark: highWaterKiB * 1024, lowWaterMark: highWaterKiB * 256,
                                              idleTimeout: idleTimeoutSeconds == 0 ? nil : .seconds(idleTimeoutSeconds))),
            callbacks: callbacks(), logger: logger)
    }

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
