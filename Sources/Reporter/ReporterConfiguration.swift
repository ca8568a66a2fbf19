import Storage

/// Settings of a ``Reporter``.
public struct ReporterConfiguration: Sendable, Hashable {
    /// Address to bind (default 127.0.0.1).
    public var host: String
    /// Port to bind (default 7779, PROTOCOL.md); 0 lets the kernel pick.
    public var port: Int
    /// Reports held while the database is slow (waiting or being written); when full the oldest is dropped (and
    /// counted).
    public var queueCapacity: Int
    /// Most ServerCallStatus rows held (the rows of the reports held): a report's size is the agent's choice, so
    /// the count of reports alone does not bound the memory. The oldest reports are dropped to stay below it.
    /// A row takes about 40 bytes: the default holds at most about 40 MB.
    public var maxQueuedRows: Int
    /// Most ServerCallStatus rows written in one transaction (whole reports are taken until this many rows are).
    public var batchRows: Int
    /// How long reports are collected before a batch smaller than ``batchRows`` is written.
    public var flushInterval: Duration
    /// Most agent connections at once; more are refused.
    public var maxConnections: Int
    /// How long a graceful shutdown goes on writing the queued reports before it gives up on them.
    public var drainTimeout: Duration

    /// Creates a configuration; every setting has a default. See ``validate()``.
    public init(host: String = "127.0.0.1", port: Int = 7779, queueCapacity: Int = 10_000,
                maxQueuedRows: Int = 1_000_000, batchRows: Int = 500, flushInterval: Duration = .milliseconds(100),
                maxConnections: Int = 100_000, drainTimeout: Duration = .seconds(5)) {
        self.host = host
        self.port = port
        self.queueCapacity = queueCapacity
        self.maxQueuedRows = maxQueuedRows
        self.batchRows = batchRows
        self.flushInterval = flushInterval
        self.maxConnections = maxConnections
        self.drainTimeout = drainTimeout
    }

    /// Throws ``ReporterError/invalidConfiguration(_:)`` naming the first setting out of range.
    public func validate() throws {
        func check(_ ok: Bool, _ message: @autoclosure () -> String) throws {
            if !ok { throw ReporterError.invalidConfiguration(message()) }
        }
        try check(!host.isEmpty, "host must not be empty")
        try check((0...65535).contains(port), "port must be 0...65535, got \(port)")
        try check(queueCapacity >= 1, "queueCapacity must be at least 1, got \(queueCapacity)")
        try check(maxQueuedRows >= 1, "maxQueuedRows must be at least 1, got \(maxQueuedRows)")
        try check(batchRows >= 1, "batchRows must be at least 1, got \(batchRows)")
        try check(flushInterval >= .zero, "flushInterval must not be negative, got \(flushInterval)")
        try check(maxConnections >= 1, "maxConnections must be at least 1, got \(maxConnections)")
        try check(drainTimeout >= .zero, "drainTimeout must not be negative, got \(drainTimeout)")
    }

    /// The reporter's queue: reports are the elements, their rows the cost; a failed batch is not retried.
    var writerConfiguration: BatchWriterConfiguration {
        BatchWriterConfiguration(capacity: queueCapacity, maxCost: maxQueuedRows, batchSize: batchRows,
                                 batchCost: batchRows, flushInterval: flushInterval, retries: 0,
                                 drainTimeout: drainTimeout)
    }
}

/// A snapshot of a reporter's counters. Every received report ends up written, dropped, in a failed write, or
/// still queued: `received == written + dropped + failedReports + queued`.
public struct ReporterStatistics: Sendable, Hashable {
    /// ReportStatusRequests received.
    public var received: Int
    /// Reports whose rows were committed.
    public var written: Int
    /// Reports dropped because the queue was full (the oldest go first).
    public var dropped: Int
    /// Transactions that failed; their reports are lost (counted in ``failedReports``).
    public var failedWrites: Int
    /// Reports lost in failed transactions.
    public var failedReports: Int
    /// Reports waiting to be written or being written.
    public var queued: Int
}
