// Duration -> integer units, in one place. Every conversion saturates: a negative duration is 0 and one beyond the
// integer's range is its maximum, so a timeout of `.seconds(Int64.max)` waits "forever" instead of trapping.

extension Duration {
    /// Whole nanoseconds, truncated, in 0...UInt64.max. For deadlines on the monotonic clock.
    @inlinable
    public var nanosecondsSaturated: UInt64 {
        let (s, atto) = components
        if s < 0 || (s == 0 && atto <= 0) { return 0 }
        let (whole, overflow) = UInt64(s).multipliedReportingOverflow(by: 1_000_000_000)
        if overflow { return .max }
        let (total, carry) = whole.addingReportingOverflow(UInt64(max(0, atto) / 1_000_000_000))
        return carry ? .max : total
    }

    /// Whole milliseconds, rounded up (a timeout never waits less than asked), in 0...Int64.max.
    @inlinable
    public var millisecondsRoundedUp: Int64 {
        let (s, atto) = components
        if s < 0 || (s == 0 && atto <= 0) { return 0 }
        let (whole, overflow) = s.multipliedReportingOverflow(by: 1000)
        if overflow { return .max }
        let part = (max(0, atto) + 999_999_999_999_999) / 1_000_000_000_000_000
        let (total, carry) = whole.addingReportingOverflow(part)
        return carry ? .max : total
    }

    /// Whole milliseconds, truncated, in 0...Int64.max (for display and wire fields in milliseconds).
    @inlinable
    public var millisecondsTruncated: Int64 {
        let (s, atto) = components
        if s < 0 { return 0 }
        let (whole, overflow) = s.multipliedReportingOverflow(by: 1000)
        if overflow { return .max }
        let (total, carry) = whole.addingReportingOverflow(max(0, atto) / 1_000_000_000_000_000)
        return carry ? .max : total
    }

    /// The duration in seconds as a Double (for printing and rates).
    @inlinable
    public var secondsValue: Double {
        let (s, atto) = components
        return Double(s) + Double(atto) / 1e18
    }

    /// A duration of `nanoseconds` (saturated into Int64).
    @inlinable
    public static func nanosecondsSaturating(_ nanoseconds: UInt64) -> Duration {
        .nanoseconds(Int64(clamping: nanoseconds))
    }
}
