import Storage

/// Settings of a ``Reporter``.
public struct ReporterConfiguration: Sendable, Hashable {
    /// Address to bind (default 127.0.0.1).
    public var host: String
    /// Port to bind (default 7779, PROTOCOL.md); 0 lets the kernel pick.
    public var port: Int
    /// Reports held while the database is slow (waiting or being written). When full, the connection a new report
    /// came on stops being read until the writer has made room (push back: the agent's socket buffer fills); the
    /// report itself waits on its connection, nothing accepted is dropped.
    public var queueCapacity: Int
    /// Most bytes of queued reports held (waiting or being written), counted as
    /// ``ReporterConfiguration/reportOverheadBytes`` per report plus ``ReporterConfiguration/rowBytes`` per result:
    /// a report's size is the agent's choice, so the count of reports alone does not bound the memory. When full,
    /// the connection pushes back as for ``queueCapacity``. Default 4 MiB (about 116,000 results: what SQLite wrote in
    /// about 5 s, the default ``drainTimeout``, at 20,000 rows/s on a 2-core machine). A paused
    /// connection also holds the reports of its last read (at most one read buffer's worth of frames).
    public var maxQueuedBytes: Int
    /// Most results in one report; a report with more is refused (counted in
    /// ``ReporterStatistics/refused``, one log line per episode) and the connection goes on. Default 10,000
    /// (Lars's agent sends one result per host of a module); at least 1 and such a report must fit in
    /// ``maxQueuedBytes``.
    public var maxReportResults: Int
    /// Most ServerCallStatus rows written in one transaction (whole reports are taken until this many rows are).
    public var batchRows: Int
    /// How long reports are collected before a batch smaller than ``batchRows`` is written.
    public var flushInterval: Duration
    /// Most agent connections at once; more are refused.
    public var maxConnections: Int
    /// How long a graceful shutdown goes on writing the queued reports (those waiting on paused connections
    /// included) before it gives up on them; how many it could not write is logged and left in
    /// ``ReporterStatistics/queued``.
    public var drainTimeout: Duration

    /// Bytes one queued result (a ServerCallStatus row) is counted as: the row's size in memory.
    public static let rowBytes = MemoryLayout<Reporter.Row>.stride
    /// Bytes one queued report is counted as besides its rows (the array that holds them, the queue's slot).
    public static let reportOverheadBytes = 64

    /// The bytes a report of `results` results is counted as against ``maxQueuedBytes``.
    public static func queuedBytes(results: Int) -> Int { reportOverheadBytes + results * rowBytes }

    /// Creates a configuration; every setting has a default. See ``validate()``.
    public init(host: String = "127.0.0.1", port: Int = 7779, queueCapacity: Int = 10_000,
                maxQueuedBytes: Int = 4 << 20, maxReportResults: Int = 10_000, batchRows: Int = 500,
                flushInterval: Duration = .milliseconds(100), maxConnections: Int = 100_000,
                drainTimeout: Duration = .seconds(5)) {
        self.host = host
        self.port = port
        self.queueCapacity = queueCapacity
        self.maxQueuedBytes = maxQueuedBytes
        self.maxReportResults = maxReportResults
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
        try check(maxReportResults >= 1, "maxReportResults must be at least 1, got \(maxReportResults)")
        try check(maxQueuedBytes >= Self.queuedBytes(results: maxReportResults),
                  "maxQueuedBytes (\(maxQueuedBytes)) must hold one report of maxReportResults (\(maxReportResults)) "
                      + "results: at least \(Self.queuedBytes(results: maxReportResults))")
        try check(batchRows >= 1, "batchRows must be at least 1, got \(batchRows)")
        try check(flushInterval >= .zero, "flushInterval must not be negative, got \(flushInterval)")
        try check(maxConnections >= 1, "maxConnections must be at least 1, got \(maxConnections)")
        try check(drainTimeout >= .zero, "drainTimeout must not be negative, got \(drainTimeout)")
    }

    /// The reporter's queue: reports are the elements, their bytes the cost (a batch: whole reports up to
    /// `batchRows` rows). A batch that fails for the connection or the pool is tried again (twice, 250 ms apart):
    /// the rows overwrite, so a batch written twice leaves what it would once. Rows the database refuses are not
    /// failures of the batch (``Reporter``).
    var writerConfiguration: BatchWriterConfiguration {
        BatchWriterConfiguration(capacity: queueCapacity, maxCost: maxQueuedBytes, batchSize: batchRows,
                                 batchCost: Self.queuedBytes(results: batchRows), flushInterval: flushInterval,
                                 retries: 2, retryDelay: .milliseconds(250), drainTimeout: drainTimeout)
    }
}

/// A snapshot of a reporter's counters. Every received report ends up written, dropped, refused, in a failed
/// write, or still queued: `received == written + dropped + refused + failedReports + queued`.
public struct ReporterStatistics: Sendable, Hashable {
    /// ReportStatusRequests received.
    public var received: Int
    /// Reports whose rows were committed.
    public var written: Int
    /// Reports dropped (none since the queue pushes back; kept for the balance above).
    public var dropped: Int
    /// Reports refused for having more than ``ReporterConfiguration/maxReportResults`` results.
    public var refused: Int
    /// Times a connection stopped being read because the queue was full.
    public var pauses: Int
    /// Transactions that failed, their retries used up; their reports are lost (counted in ``failedReports``).
    public var failedWrites: Int
    /// Reports lost in failed transactions.
    public var failedReports: Int
    /// Reports waiting to be written or being written, those waiting on paused connections included. After
    /// ``Reporter/run()`` returned: the reports it could not write.
    public var queued: Int
    /// The bytes of the reports in the writer's queue (``ReporterConfiguration/maxQueuedBytes`` bounds it).
    public var queuedBytes: Int
    /// The most bytes the writer's queue held at once.
    public var peakQueuedBytes: Int
    /// ServerCallStatus rows the database refused (a value out of its column's range, say): left out of their
    /// batch, whose other rows were written (its report counts as written), and logged.
    public var rowsRefused: Int
}
