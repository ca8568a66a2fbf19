import Reactor
import SwitchyardCore

/// Settings of a ``MediaRelayServer``.
public struct RelayConfiguration: Sendable {
    /// Address both ports bind to (default 127.0.0.1).
    public var host: String
    /// Port of the frame protocol (ids 400+); 0 lets the kernel pick, nil serves no frames. Default 7800.
    public var framePort: Int?
    /// Port of HTTP/1.1 (`GET /live/NAME.ts`, `GET /vod/NAME.ts?start=S`, `POST /publish/NAME.ts`); 0 lets the kernel
    /// pick, nil serves no HTTP. Default 7801.
    public var httpPort: Int?
    /// Most viewers at once (both protocols); more are answered 503 / FULL. Default 1,000.
    public var capacity: Int
    /// Most publishers at once. Default 16.
    public var maxPublishers: Int
    /// The ring of each playback on each loop (bytes kept, how far a viewer may fall behind before it skips to a
    /// keyframe, how long it may stay stuck before it is closed).
    public var ring: ChunkRing<UInt64>.Configuration
    /// Viewers are written to on this beat, each write carrying the chunks due within the next beat (they are
    /// handed to the ring that long before they are due, so none is late): fewer, larger writes, the cost of a
    /// viewer's socket paid per beat and not per frame. Zero writes every chunk when it is due. Default 250 ms
    /// (a player buffers more than that; a live stream is that much further ahead of its viewers).
    public var writeInterval: Duration
    /// Media the reader keeps read ahead of what is due. Default 2 s.
    public var readAhead: Duration
    /// Bytes of one file read. Default 256 KiB.
    public var readSize: Int
    /// A live playback of a file that nobody watches is stopped after this long. Default 10 s.
    public var idleLivePlayback: Duration
    /// A publisher that sends nothing for this long is closed and its stream ended. Default 10 s.
    public var publisherIdleTimeout: Duration
    /// The request head bound (431 past it). Default 8 KiB.
    public var maxRequestHeadBytes: Int
    /// A connection that has not sent a whole request head within this long is closed. Default 10 s.
    public var requestHeadTimeout: Duration
    /// An edge relay's origin (its frame port, "HOST:PORT"): a live name the catalog does not have is pulled from the
    /// origin once and fanned out here, so the origin serves one connection however many viewers the edge has.
    /// Default nil: not an edge.
    public var origin: String?

    public init(host: String = "127.0.0.1", framePort: Int? = 7800, httpPort: Int? = 7801, capacity: Int = 1000,
                maxPublishers: Int = 16, ring: ChunkRing<UInt64>.Configuration = .init(),
                readAhead: Duration = .seconds(2), readSize: Int = 256 << 10, idleLivePlayback: Duration = .seconds(10),
                publisherIdleTimeout: Duration = .seconds(10), maxRequestHeadBytes: Int = 8 << 10,
                requestHeadTimeout: Duration = .seconds(10), origin: String? = nil,
                writeInterval: Duration = .milliseconds(250)) {
        self.host = host
        self.framePort = framePort
        self.httpPort = httpPort
        self.capacity = capacity
        self.maxPublishers = maxPublishers
        self.ring = ring
        self.readAhead = readAhead
        self.readSize = readSize
        self.idleLivePlayback = idleLivePlayback
        self.publisherIdleTimeout = publisherIdleTimeout
        self.maxRequestHeadBytes = maxRequestHeadBytes
        self.requestHeadTimeout = requestHeadTimeout
        self.origin = origin
        self.writeInterval = writeInterval
    }

    /// Throws ``RelayError/invalidConfiguration(_:)`` naming the first setting out of range.
    public func validate() throws(RelayError) {
        func check(_ ok: Bool, _ message: @autoclosure () -> String) throws(RelayError) {
            if !ok { throw .invalidConfiguration(message()) }
        }
        try check(!host.isEmpty, "host must not be empty")
        try check(framePort != nil || httpPort != nil, "at least one of the frame and HTTP ports is needed")
        for port in [framePort, httpPort].compactMap({ $0 }) {
            try check((0...65535).contains(port), "port must be 0...65535, got \(port)")
        }
        try check(capacity >= 1, "capacity must be at least 1, got \(capacity)")
        try check(maxPublishers >= 0, "maxPublishers must not be negative, got \(maxPublishers)")
        try check(ring.capacityBytes >= 64 << 10, "the ring must hold at least 64 KiB, got \(ring.capacityBytes)")
        try check(ring.maxLag > .zero, "the ring's maxLag must be positive")
        try check(ring.stuckTimeout > .zero, "the ring's stuckTimeout must be positive")
        try check(readAhead > .zero && readAhead <= .seconds(60), "readAhead must be 0...60 s, got \(readAhead)")
        try check((4 << 10...16 << 20).contains(readSize), "readSize must be 4 KiB...16 MiB, got \(readSize)")
        try check(idleLivePlayback >= .zero, "idleLivePlayback must not be negative")
        try check(publisherIdleTimeout > .zero, "publisherIdleTimeout must be positive")
        try check((1 << 10...1 << 20).contains(maxRequestHeadBytes),
                  "maxRequestHeadBytes must be 1 KiB...1 MiB, got \(maxRequestHeadBytes)")
        try check(requestHeadTimeout > .zero, "requestHeadTimeout must be positive")
        try check(writeInterval >= .zero && writeInterval <= .seconds(1), "writeInterval must be 0...1 s")
        try check(writeInterval < ring.maxLag, "writeInterval must be shorter than the ring's maxLag")
        if let origin {
            try check(IPv4Endpoint.splitHostPort(origin).map { $0.port > 0 } == true,
                      "origin must be HOST:PORT, got \(origin)")
        }
    }
}

/// The errors of the relay.
public enum RelayError: Error, Sendable, Equatable, CustomStringConvertible {
    /// A setting is out of range; the text names it.
    case invalidConfiguration(String)
    /// The file or stream is not MPEG-TS with a clock, or cannot be read.
    case badMedia(String)
    /// ``MediaRelayServer/run()`` was called while it runs.
    case alreadyRunning

    public var description: String {
        switch self {
        case .invalidConfiguration(let text): return "invalid relay configuration: \(text)"
        case .badMedia(let text): return "bad media: \(text)"
        case .alreadyRunning: return "the relay is running already"
        }
    }
}

/// A snapshot of a relay's counters.
public struct RelayStatistics: Sendable, Hashable {
    /// Viewers now (both protocols).
    public var viewers = 0
    /// Viewers served since the start.
    public var viewersServed = 0
    /// Viewers refused because the relay was full.
    public var viewersRefused = 0
    /// Playbacks running now, and started since the start.
    public var playbacks = 0
    public var playbacksStarted = 0
    /// Bytes read from media files.
    public var fileBytesRead = 0
    /// Chunks written into the rings (once per chunk and loop with viewers).
    public var chunksAppended = 0
    /// Bytes handed to viewers' sockets.
    public var bytesSent = 0
    /// Skips of viewers that fell behind, and viewers closed for staying stuck.
    public var drops = 0
    public var stuckClosed = 0
    /// Requests refused: bad heads, unknown resources, wrong methods.
    public var badRequests = 0
    public var notFound = 0
    /// Publishers now.
    public var publishers = 0
}
