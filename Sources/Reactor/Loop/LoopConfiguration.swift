/// Tunables of one event loop.
public struct LoopConfiguration: Sendable {
    /// Which multiplexer to use.
    public var poller: PollerKind
    /// Bytes of the per-loop scratch area reads land in (whole frames are dispatched from it). A read that fills
    /// the area is followed by another (more may be waiting). 256 KiB saves that second read for 64 KiB messages
    /// but measured slower with 1000 such connections (44-54 against 50-68 µs of CPU per message), so 64 KiB.
    public var scratchBytes: Int
    /// Upper bound of the memory a loop's buffer pool keeps for reuse; chunks beyond it go back to malloc.
    public var poolCapBytes: Int
    /// How often the loop frees the pooled chunks that no request needed since the last time (only while its pool
    /// holds any: an idle loop with an empty pool does not wake up). After a burst the pool is empty within two
    /// intervals. Default 1 s.
    public var poolDecayInterval: Duration
    /// Once this many bytes of buffers have gone back to malloc (across the process), the loop asks the allocator
    /// to return free memory to the system (`malloc_trim`), at most once a second. Without it glibc keeps freed
    /// 64 KiB chunks in its heaps: 200 clients that pushed 6 MiB each left `switchyard-echo` at 311 MB instead of
    /// 10 MB (lowering the mmap threshold instead left 79 MB). 0: never. Default 4 MiB.
    public var trimThresholdBytes: Int
    /// Largest single buffer the loop will hand out (input or output chunk); above it a clear error.
    public var maxBufferBytes: Int
    /// How long the loop keeps polling without sleeping after its last I/O event (zero: never; the default).
    /// A loop that sleeps in the poller takes a thread wake-up (tens of microseconds on a virtual machine) for the
    /// next event; polling with a zero timeout for a while after traffic answers a request-reply peer that comes
    /// straight back without that wake-up, for at most this much CPU per event. For latency-bound services such
    /// as the load-balancing agent; a loop with steady traffic pays nothing extra (it is awake anyway).
    public var busyPoll: Duration

    public init(
        poller: PollerKind = .epoll,
        scratchBytes: Int = 64 * 1024,
        poolCapBytes: Int = 64 * 1024 * 1024,
        poolDecayInterval: Duration = .seconds(1),
        trimThresholdBytes: Int = 4 * 1024 * 1024,
        maxBufferBytes: Int = 64 * 1024 * 1024,
        busyPoll: Duration = .zero
    ) {
        self.poller = poller
        self.scratchBytes = scratchBytes
        self.poolCapBytes = poolCapBytes
        self.poolDecayInterval = poolDecayInterval
        self.trimThresholdBytes = trimThresholdBytes
        self.maxBufferBytes = maxBufferBytes
        self.busyPoll = busyPoll
    }
}
