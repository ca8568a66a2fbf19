import DequeModule
import LoadBalancing

/// Hosts asked of the agent ahead of the connections that will use them, for one route on one loop: a new client
/// takes a host in hand (the agent picked it a moment ago) and connects at once, while the loop asks the agent for
/// the next ones, so the agent's round trip is off the connection's path. Each connection still uses one pick of its
/// own (as the agent counts them); only its timing changes, and the loop refills half the target at once (one batch
/// request for several picks). A host is used only while it is fresh (`maxAge`): an idle proxy asks again rather than
/// use an old pick; an answer without a host is not kept (the next client asks, and is refused, on its own). Keyed
/// requests (`--affinity client-ip`) never use it.
///
/// The target follows the connection rate, between 1 and `limit`: it doubles when a refill comes less than an eighth
/// of `maxAge` after the one before (the batch was used up fast: a larger one costs fewer requests and datagrams
/// per connection and still does not age), and halves when a host in hand went stale (picks asked for and never
/// used). It starts at 4 (or `limit` when lower).
///
/// Pure: no I/O, no clock (the shell passes the time in nanoseconds). Loop thread only.
public struct SpareHosts: Sendable {
    /// The target at most (``ProxyConfiguration/spareHosts``).
    public let limit: Int
    /// Hosts kept in hand and asked for at most now (1...`limit`; 0 when `limit` is 0).
    public private(set) var target: Int
    /// A host older than this is not used.
    public let maxAge: UInt64
    private var inHand: Deque<(host: Host, since: UInt64)> = []
    /// Requests sent for spares and not answered yet.
    public private(set) var asked = 0
    /// When the last refill was asked for (nil: never).
    private var lastRefill: UInt64?

    /// The target a route's spares start with (or `limit` when lower).
    public static let initialTarget = 4

    public init(limit: Int, maxAgeNanoseconds: UInt64) {
        self.limit = max(0, limit)
        target = min(self.limit, Self.initialTarget)
        maxAge = maxAgeNanoseconds
    }

    /// Hosts in hand now (fresh or not).
    public var count: Int { inHand.count }

    /// A fresh host for a new connection, if one is in hand (stale ones are dropped, and the target halves).
    public mutating func take(now: UInt64) -> Host? {
        var dropped = false
        defer { if dropped { target = max(min(1, limit), target / 2) } }
        while let first = inHand.first {
            inHand.removeFirst()
            if now &- first.since <= maxAge { return first.host }
            dropped = true
        }
        return nil
    }

    /// How many requests to send now to fill up to the target, counted as asked: none while more than half the
    /// target is in hand or asked, then all that is missing at once (so the shell asks for several in one batch).
    /// A refill soon after the last one doubles the target first.
    public mutating func toAsk(now: UInt64) -> Int {
        guard target > 0, inHand.count + asked <= target / 2 else { return 0 }
        if let last = lastRefill, now &- last < maxAge / 8 { target = min(limit, target * 2) }
        lastRefill = now
        let n = max(0, target - inHand.count - asked)
        asked += n
        return n
    }

    /// The agent answered a spare request: a host is kept; no host, or no answer, is dropped.
    public mutating func answered(_ host: Host?, now: UInt64) {
        if asked > 0 { asked -= 1 }
        if let host, inHand.count < limit { inHand.append((host, now)) }
    }
}
