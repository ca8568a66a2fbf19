import SwitchyardCore

/// When a connection sends a heartbeat (`ReservedMessageID.heartbeat`, an empty frame) and when its peer counts as
/// gone: the one heartbeat rule of the framed client, the chat client and server registrations. A plain value;
/// its owner calls `decide` from a timer that fires every `checkInterval`.
public struct HeartbeatPolicy: Sendable, Equatable {
    /// Send a heartbeat when nothing has been sent for this long.
    public var interval: Duration
    /// The peer counts as gone after this long without a byte from it (nil: never, for a peer that only listens).
    public var silenceTimeout: Duration?

    public init(interval: Duration, silenceTimeout: Duration? = nil) {
        self.interval = interval
        self.silenceTimeout = silenceTimeout
    }

    /// How often the owner's timer should call `decide`: half the interval (or of the silence timeout, when
    /// shorter), at least 1 ms.
    public var checkInterval: Duration {
        var ns = interval.nanosecondsSaturated / 2
        if let silence = silenceTimeout?.nanosecondsSaturated { ns = min(ns, silence / 2) }
        return .nanosecondsSaturating(max(ns, 1_000_000))
    }

    /// What to do now.
    public enum Decision: Sendable, Equatable {
        /// Nothing: traffic is recent enough both ways.
        case idle
        /// Send a heartbeat frame.
        case sendHeartbeat
        /// The peer has been silent past `silenceTimeout`: close the connection.
        case peerSilent
    }

    /// Decides from the times (monotonic nanoseconds) of the last bytes sent and received.
    public func decide(now: UInt64, lastSent: UInt64, lastReceived: UInt64) -> Decision {
        if let silence = silenceTimeout, now &- lastReceived >= silence.nanosecondsSaturated, now >= lastReceived {
            return .peerSilent
        }
        if now &- lastSent >= interval.nanosecondsSaturated, now >= lastSent { return .sendHeartbeat }
        return .idle
    }
}
