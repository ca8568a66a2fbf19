import DequeModule
import LoadBalancing

/// Hosts asked of the agent ahead of the connections that will use them, for one route on one loop: a new client
/// takes a host in hand (the agent picked it a moment ago) and connects at once, while the loop asks the agent for
/// the next ones, so the agent's round trip is off the connection's path. Each connection still uses one pick of its
/// own (as the agent counts them); only its timing changes, and the loop refills half the target at once (one batch
/// request for several picks). A host is used only while
/// it is fresh (`maxAge`): an idle proxy asks again rather than use an old pick; an answer without a host is not
/// kept (the next client asks, and is refused, on its own). Keyed requests (`--affinity client-ip`) never use it.
///
/// Pure: no I/O, no clock (the shell passes the time in nanoseconds). Loop thread only.
public struct SpareHosts: Sendable {
    /// Hosts kept in hand and asked for at most (in hand + asked).
    public let target: Int
    /// A host older than this is not used.
    public let maxAge: UInt64
    private var inHand: Deque<(host: Host, since: UInt64)> = []
    /// Requests sent for spares and not answered yet.
    public private(set) var asked = 0

    public init(target: Int, maxAgeNanoseconds: UInt64) {
        self.target = max(0, target)
        maxAge = maxAgeNanoseconds
    }

    /// Hosts in hand now (fresh or not).
    public var count: Int { inHand.count }

    /// A fresh host for a new connection, if one is in hand (stale ones are dropped).
    public mutating func take(now: UInt64) -> Host? {
        while let first = inHand.first {
            inHand.removeFirst()
            if now &- first.since <= maxAge { return first.host }
        }
        return nil
    }

    /// How many requests to send now to fill up to the target, counted as asked: none while more than half the
    /// target is in hand or asked, then all that is missing at once (so the shell asks for several in one batch).
    public mutating func toAsk() -> Int {
        let have = inHand.count + asked
        guard have <= target / 2 else { return 0 }
        let n = max(0, target - have)
        asked += n
        return n
    }

    /// The agent answered a spare request: a host is kept; no host, or no answer, is dropped.
    public mutating func answered(_ host: Host?, now: UInt64) {
        if asked > 0 { asked -= 1 }
        if let host, inHand.count < target { inHand.append((host, now)) }
    }
}
