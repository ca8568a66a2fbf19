import Synchronization

/// A token bucket per access-file token: `rate=N` lets a token take N requests at once and N a second after that
/// (refilled continuously). Shared by the agent's connections (one lock, held for a few instructions); the clock is
/// the caller's (monotonic nanoseconds), so tests drive it.
final class TokenRateLimiter: Sendable {
    private struct Bucket {
        var tokens: Double
        var lastRefill: UInt64?
    }

    private let rates: [Int?]
    private let buckets: Mutex<[Bucket]>

    /// `rates[i]`: requests a second of token i (nil: no limit).
    init(rates: [Int?]) {
        self.rates = rates
        buckets = Mutex(rates.map { Bucket(tokens: Double($0 ?? 0), lastRefill: nil) })
    }

    /// Takes one request of token `index` at `now`; false when its bucket is empty (or true: it has no limit).
    func take(_ index: Int, now: UInt64) -> Bool {
        guard let rate = rates[index] else { return true }
        return buckets.withLock { all in
            var bucket = all[index]
            if let last = bucket.lastRefill, now > last {
                bucket.tokens = min(Double(rate), bucket.tokens + Double(now - last) * Double(rate) / 1e9)
            }
            bucket.lastRefill = max(now, bucket.lastRefill ?? now)
            let allowed = bucket.tokens >= 1
            if allowed { bucket.tokens -= 1 }
            all[index] = bucket
            return allowed
        }
    }
}
