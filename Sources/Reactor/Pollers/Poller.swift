import CSwitchyardLinux

/// The I/O multiplexer behind an event loop. Chosen per group at run time.
public enum PollerKind: String, Sendable, CaseIterable, CustomStringConvertible {
    /// Linux epoll (default): O(ready) per wait.
    case epoll
    /// poll(2): O(watched) per wait, no descriptor limit.
    case poll
    /// select(2): O(highest fd) per wait; descriptors must be below FD_SETSIZE (1024).
    case select

    public var description: String { rawValue }
}

/// What a descriptor is watched for.
public struct IOInterest: OptionSet, Sendable, Hashable {
    public let rawValue: UInt32
    public init(rawValue: UInt32) { self.rawValue = rawValue }

    public static let read = IOInterest(rawValue: SY_EV_READ)
    public static let write = IOInterest(rawValue: SY_EV_WRITE)
    public static let none: IOInterest = []
}

/// Readiness bits reported by a poller (same values on every backend).
enum PollBits {
    static let read: UInt32 = SY_EV_READ
    static let write: UInt32 = SY_EV_WRITE
    static let error: UInt32 = SY_EV_ERROR
    static let hangup: UInt32 = SY_EV_HUP
    static let readHangup: UInt32 = SY_EV_RDHUP
}

/// One backend of the loop. Loop thread only.
protocol Poller: AnyObject {
    func register(fd: Int32, interest: IOInterest) throws
    func modify(fd: Int32, interest: IOInterest) throws
    func unregister(fd: Int32)
    /// Waits up to `timeoutMs` (-1: forever) and writes at most `capacity` events to `events`.
    func wait(timeoutMs: Int32, events: UnsafeMutablePointer<sy_event>, capacity: Int) throws -> Int
    func close()
}

func makePoller(_ kind: PollerKind) throws -> any Poller {
    switch kind {
    case .epoll: return try EpollPoller()
    case .poll: return PollPoller()
    case .select: return SelectPoller()
    }
}
