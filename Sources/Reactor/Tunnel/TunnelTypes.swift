/// How a tunnel moves bytes from one socket to the other.
public enum TunnelTransfer: String, Sendable, CaseIterable, CustomStringConvertible {
    /// splice(2) through a pipe: socket to pipe to socket, the bytes never enter user memory.
    case splice
    /// read(2) into the loop's scratch area and write(2) out of it (what is not taken at once waits in a
    /// pooled buffer).
    case copy
    /// Each direction copies while its reads are small (a splice costs more than a read and a write for a short
    /// message) and splices once a read fills the buffer (a bulk transfer), back to copying after a short one.
    case auto

    public var description: String { rawValue }
}

/// A tunnel's limits.
public struct TunnelOptions: Sendable {
    /// How bytes move (default auto).
    public var transfer: TunnelTransfer
    /// Bytes in flight per direction. Nothing more is read from a side while this many of its bytes wait for
    /// the other side to take them (backpressure), so a tunnel holds at most twice this.
    public var bufferBytes: Int
    /// A tunnel with no byte moving either way for this long ends (`TunnelEnd.idleTimeout`). Off when nil.
    public var idleTimeout: Duration?

    public init(transfer: TunnelTransfer = .auto, bufferBytes: Int = 64 * 1024, idleTimeout: Duration? = nil) {
        self.transfer = transfer
        self.bufferBytes = max(4096, bufferBytes)
        self.idleTimeout = idleTimeout
    }
}

/// One of the two sockets of a tunnel.
public enum TunnelSide: String, Sendable, CustomStringConvertible {
    /// The accepted socket (the client).
    case client
    /// The socket the owner connected (the server, the backend).
    case server

    public var description: String { rawValue }
}

/// Why a tunnel ended.
public enum TunnelEnd: Sendable, Equatable, CustomStringConvertible {
    /// Both sides sent their FIN and every byte was delivered.
    case finished
    /// A side failed (a reset, an error): the tunnel ended at once and the other side was reset.
    case failed(TunnelSide, IOError)
    /// No byte moved for `TunnelOptions.idleTimeout`; both sides were reset.
    case idleTimeout
    /// Its owner closed it (`TCPTunnel.close()`), or its loop stopped.
    case closed

    public var description: String {
        switch self {
        case .finished: return "finished"
        case .failed(let side, let error): return "\(side) failed: \(error)"
        case .idleTimeout: return "idle timeout"
        case .closed: return "closed"
        }
    }
}

/// What a tunnel did, handed to its end callback.
public struct TunnelOutcome: Sendable, Equatable {
    public var end: TunnelEnd
    /// Bytes delivered from the client to the server (the preamble not counted).
    public var clientToServerBytes: UInt64
    /// Bytes delivered from the server to the client.
    public var serverToClientBytes: UInt64

    public init(end: TunnelEnd, clientToServerBytes: UInt64, serverToClientBytes: UInt64) {
        self.end = end
        self.clientToServerBytes = clientToServerBytes
        self.serverToClientBytes = serverToClientBytes
    }
}
