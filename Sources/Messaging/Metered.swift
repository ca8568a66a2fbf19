import Metrics
import Synchronization

/// A count kept twice: an atomic that a service's statistics snapshot reads (tests, tools), and a swift-metrics
/// counter for whatever backend the executable bootstraps (none: a no-op). Safe from any thread; the metric handler is
/// made once, so counting allocates nothing.
public final class MeteredCount: Sendable {
    private let count = Atomic<Int>(0)
    private let counter: Counter

    /// `factory`: where the counter's handler comes from (the bootstrapped backend unless a test gives its own).
    public init(_ label: String, dimensions: [(String, String)] = [],
                factory: any MetricsFactory = MetricsSystem.factory) {
        counter = Counter(label: label, dimensions: dimensions,
                          handler: factory.makeCounter(label: label, dimensions: dimensions))
    }

    /// What was counted so far.
    public var value: Int { count.load(ordering: .relaxed) }

    public func add(_ n: Int = 1) {
        count.wrappingAdd(n, ordering: .relaxed)
        counter.increment(by: n)
    }
}

/// Slots of a limited resource (requests in flight, open transactions): an atomic for the snapshot and a
/// swift-metrics gauge recording how many are taken after each change. Safe from any thread.
public final class MeteredSlots: Sendable {
    private let taken = Atomic<Int>(0)
    private let gauge: Gauge

    public init(_ label: String, dimensions: [(String, String)] = []) {
        gauge = Gauge(label: label, dimensions: dimensions)
    }

    /// Slots taken now.
    public var value: Int { taken.load(ordering: .relaxed) }

    /// Takes a slot; false (nothing taken) when `limit` are taken.
    public func take(limit: Int) -> Bool {
        let now = taken.wrappingAdd(1, ordering: .relaxed).newValue
        if now > limit {
            taken.wrappingSubtract(1, ordering: .relaxed)
            return false
        }
        gauge.record(now)
        return true
    }

    /// Gives back a slot `take` granted.
    public func release() {
        gauge.record(taken.wrappingSubtract(1, ordering: .relaxed).newValue)
    }
}
