/// Errors of the reactor layer that are not a plain failed system call (those are `IOError`).
public enum ReactorError: Error, CustomStringConvertible, Sendable, Equatable {
    /// `select(2)` can only watch descriptors below FD_SETSIZE; this one is not.
    case descriptorOutOfRangeForSelect(fd: Int32, limit: Int32)
    /// A descriptor was registered twice on one loop.
    case alreadyRegistered(fd: Int32)
    /// A buffer larger than the configured maximum was asked for.
    case bufferLimitExceeded(requested: Int, limit: Int)
    /// The host string is not an IPv4 address or a name that resolves to one.
    case badAddress(String)
    /// The operation needs a running loop, and the loop has stopped.
    case loopStopped
    /// A connect did not finish within the configured timeout.
    case connectTimeout
    /// The server or client was already started.
    case alreadyStarted
    /// Nothing arrived from the peer for longer than `ConnectionOptions.idleTimeout`.
    case idleTimeout

    public var description: String {
        switch self {
        case let .descriptorOutOfRangeForSelect(fd, limit):
            return "descriptor \(fd) cannot be watched by select (FD_SETSIZE is \(limit)); use the epoll or poll poller"
        case let .alreadyRegistered(fd):
            return "descriptor \(fd) is already registered on this loop"
        case let .bufferLimitExceeded(requested, limit):
            return "buffer of \(requested) bytes asked for, above the configured maximum of \(limit) bytes"
        case let .badAddress(host):
            return "'\(host)' is not an IPv4 address or a resolvable host name"
        case .loopStopped:
            return "the event loop has stopped"
        case .connectTimeout:
            return "connect timed out"
        case .alreadyStarted:
            return "already started"
        case .idleTimeout:
            return "peer silent for longer than the idle timeout"
        }
    }
}
