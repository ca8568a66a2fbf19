/// Token buckets by source address: each source may take `burst` at once and `perMinute` a minute after that
/// (refilled continuously). The chat server limits registrations with one (each costs a password hash).
///
/// A value type with no clock and no lock: every call takes `now` (monotonic nanoseconds); `ChatCore` owns one.
/// The table holds only sources whose bucket is not full: a full bucket is the same as no entry, so entries are
/// dropped once they refill (checked when the table passes ``pruneThreshold``).
public struct SourceRateLimiter: Sendable {
    private struct Bucket {
        var tokens: Double
        var lastRefill: UInt64
    }

    /// Entries kept before the refilled ones are dropped.
    static let pruneThreshold = 10_000

    private let burst: Double
    private let perNanosecond: Double
    private var buckets: [UInt32: Bucket] = [:]

    /// - Parameters:
    ///   - perMinute: Tokens added a minute (at least 1).
    ///   - burst: The bucket's size (at least 1): what a source may take at once.
    public init(perMinute: Int, burst: Int) {
        self.burst = Double(max(1, burst))
        perNanosecond = Double(max(1, perMinute)) / 60e9
    }

    /// Sources with a bucket that is not full.
    public var trackedSources: Int { buckets.count }

    /// Takes a token of `source` at `now`; false when its bucket is empty.
    public mutating func take(_ source: UInt32, now: UInt64) -> Bool {
        var bucket = buckets[source] ?? Bucket(tokens: burst, lastRefill: now)
        refill(&bucket, now: now)
        guard bucket.tokens >= 1 else {
            buckets[source] = bucket
            return false
        }
        bucket.tokens -= 1
        buckets[source] = bucket
        if buckets.count > Self.pruneThreshold { prune(now: now) }
        return true
    }

    private func refill(_ bucket: inout Bucket, now: UInt64) {
        let elapsed = now > bucket.lastRefill ? Double(now - bucket.lastRefill) : 0
        bucket.tokens = min(burst, bucket.tokens + elapsed * perNanosecond)
        bucket.lastRefill = now
    }

    private mutating func prune(now: UInt64) {
        buckets = buckets.filter { _, bucket in
            var b = bucket
            refill(&b, now: now)
            return b.tokens < burst
        }
    }
}
