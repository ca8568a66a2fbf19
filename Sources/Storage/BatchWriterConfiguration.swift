/// Settings of a ``BatchWriter``.
public struct BatchWriterConfiguration: Sendable, Hashable {
    /// Most elements held, waiting or being written. When full, the oldest waiting element is dropped (and
    /// counted); when every held element is being written, the new one is.
    public var capacity: Int
    /// Most total cost held (waiting or being written), in the unit of the writer's cost function (bytes, rows);
    /// nil: no bound but ``capacity``. The oldest waiting elements are dropped to make room; an element that
    /// costs more than this on its own is dropped at once.
    public var maxCost: Int?
    /// Most elements in one write.
    public var batchSize: Int
    /// A batch takes elements while its cost is below this (at least one element, so a batch may pass it by its
    /// last element); nil: only ``batchSize`` closes a batch.
    public var batchCost: Int?
    /// How long elements are collected before a batch that is not full is written; a full batch is written at
    /// once. Zero writes whatever is waiting as soon as the writer is free.
    public var flushInterval: Duration
    /// Further attempts of a batch whose write threw, each after ``retryDelay``; when they are used up its
    /// elements count as failed. 0: a failed batch is lost at once.
    public var retries: Int
    /// The pause before a failed batch is tried again.
    public var retryDelay: Duration
    /// How long ``BatchWriter/run()`` goes on writing what is held after ``BatchWriter/finish()``; what is left
    /// then stays unwritten (a write in progress is abandoned, not awaited).
    public var drainTimeout: Duration

    /// Creates a configuration; every setting has a default.
    public init(capacity: Int = 10_000, maxCost: Int? = nil, batchSize: Int = 500, batchCost: Int? = nil,
                flushInterval: Duration = .milliseconds(100), retries: Int = 0,
                retryDelay: Duration = .milliseconds(100), drainTimeout: Duration = .seconds(5)) {
        self.capacity = capacity
        self.maxCost = maxCost
        self.batchSize = batchSize
        self.batchCost = batchCost
        self.flushInterval = flushInterval
        self.retries = retries
        self.retryDelay = retryDelay
        self.drainTimeout = drainTimeout
    }

    /// Throws ``BatchWriterError/invalidConfiguration(_:)`` naming the first setting out of range.
    public func validate() throws {
        func check(_ ok: Bool, _ message: String) throws {
            if !ok { throw BatchWriterError.invalidConfiguration(message) }
        }
        try check(capacity >= 1, "capacity must be at least 1, got \(capacity)")
        try check(maxCost.map { $0 >= 1 } ?? true, "maxCost must be at least 1, got \(maxCost ?? 0)")
        try check(batchSize >= 1, "batchSize must be at least 1, got \(batchSize)")
        try check(batchCost.map { $0 >= 1 } ?? true, "batchCost must be at least 1, got \(batchCost ?? 0)")
        try check(flushInterval >= .zero, "flushInterval must not be negative, got \(flushInterval)")
        try check(retries >= 0, "retries must not be negative, got \(retries)")
        try check(retryDelay >= .zero, "retryDelay must not be negative, got \(retryDelay)")
        try check(drainTimeout >= .zero, "drainTimeout must not be negative, got \(drainTimeout)")
    }

    /// The same settings with every value brought into range (what a writer runs with).
    var clamped: BatchWriterConfiguration {
        var c = self
        c.capacity = max(1, capacity)
        c.maxCost = maxCost.map { max(1, $0) }
        c.batchSize = max(1, batchSize)
        c.batchCost = batchCost.map { max(1, $0) }
        c.flushInterval = max(.zero, flushInterval)
        c.retries = max(0, retries)
        c.retryDelay = max(.zero, retryDelay)
        c.drainTimeout = max(.zero, drainTimeout)
        return c
    }
}

/// The errors of a ``BatchWriter``'s setup.
public enum BatchWriterError: Error, Sendable, Hashable, CustomStringConvertible {
    /// A setting is out of range; the text names it.
    case invalidConfiguration(String)

    public var description: String {
        switch self {
        case .invalidConfiguration(let text): return "invalid batch writer configuration: \(text)"
        }
    }
}

/// A snapshot of a ``BatchWriter``'s counters. Every appended element is written, dropped, lost in a failed
/// write, or still held: `received == written + dropped + failed + queued`.
public struct BatchWriterStatistics: Sendable, Hashable {
    /// Elements appended.
    public var received = 0
    /// Elements whose write returned.
    public var written = 0
    /// Elements dropped because the writer was full.
    public var dropped = 0
    /// Elements of batches whose write threw on every attempt.
    public var failed = 0
    /// Write calls that threw (every attempt counts).
    public var failedWrites = 0
    /// Elements held: waiting, or in the write in progress.
    public var queued = 0
    /// The cost of the elements held.
    public var queuedCost = 0
    /// The most cost held at once so far (what the bound let through).
    public var peakQueuedCost = 0
}

/// What a ``BatchWriter`` did, for an owner's metrics and logs. Delivered on the thread that did it, after the
/// writer's lock is released.
public enum BatchWriterEvent: Sendable {
    /// This many elements were dropped to make room for an append.
    case dropped(Int)
    /// A write of this many elements returned.
    case written(Int)
    /// A write of this many elements threw; `willRetry` tells whether the batch is tried again (else its
    /// elements count as failed).
    case writeFailed(Int, error: any Error, willRetry: Bool)
}
