import LoadBalancing
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
    /// A playback with this many viewers or more is written on ``largeAudienceWriteInterval`` instead (it goes back
    /// below half of it): a large audience costs fewer, larger writes, and its viewers hold the stream up to that
    /// beat ahead. Default 50.
    public var largeAudience: Int
    /// The beat of a playback with a large audience (at least ``writeInterval``; equal: no change; used up to half the
    /// ring's `maxLag`, so a viewer is not skipped for the beat's own lead). Default 1 s.
    public var largeAudienceWriteInterval: Duration
    /// A beat is cut into phases of this length (or is one phase when it is shorter) and every viewer is written in
    /// its own phase, so a beat's writes are spread over it. Longer: fewer, larger batches of writes, each waking the
    /// viewers' side fewer times (at 100 viewers on the 1 s beat, 250 ms phases took 16% less CPU per byte than 50 ms
    /// ones, every frame on time either way). Default 250 ms: the short beat in one phase, the long one in four.
    public var writePhase: Duration
    /// Bytes of a viewer's stream copied into its connection's output queue at most: what its socket has not taken
    /// beyond that waits in the shared chunks (references, no copy) until the queue has drained. So a slow or stuck
    /// viewer costs at most this much memory of its own, and the relay's memory is the rings' plus viewers x this
    /// (not viewers x stream). Smaller: less memory per slow viewer, more writes for a viewer catching up. Default
    /// 64 KiB (a 250 ms beat of a 2 Mbit/s stream in one write).
    public var maxViewerQueueBytes: Int
    /// HTTP viewers are sent their bytes with sendfile, so the kernel references pages instead of copying the bytes
    /// once per viewer: a file's playback from the media file itself (its page cache, filled by the one read), a
    /// pushed stream from a shared memory file per playback (a memfd each chunk is copied into once). Off: every
    /// viewer's bytes are copied from the shared arrays by writev. Frame viewers are written by writev either way
    /// (each chunk has its own frame header). Default true.
    public var sendFile: Bool
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
    /// Registration with the name service while the relay serves, with its viewer count and capacity, so callers find
    /// "the relay that has this movie, until it is full" with GetHost by key. Default nil: not registered.
    public var registration: RelayRegistration?

    public init(host: String = "127.0.0.1", framePort: Int? = 7800, httpPort: Int? = 7801, capacity: Int = 1000,
                maxPublishers: Int = 16, ring: ChunkRing<UInt64>.Configuration = .init(),
                readAhead: Duration = .seconds(2), readSize: Int = 256 << 10, idleLivePlayback: Duration = .seconds(10),
                publisherIdleTimeout: Duration = .seconds(10), maxRequestHeadBytes: Int = 8 << 10,
                requestHeadTimeout: Duration = .seconds(10), origin: String? = nil,
                writeInterval: Duration = .milliseconds(250), registration: RelayRegistration? = nil,
                maxViewerQueueBytes: Int = 64 << 10, sendFile: Bool = true, largeAudience: Int = 50,
                largeAudienceWriteInterval: Duration = .seconds(1), writePhase: Duration = .milliseconds(250)) {
        self.writePhase = writePhase
        self.largeAudience = largeAudience
        self.largeAudienceWriteInterval = largeAudienceWriteInterval
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
        self.registration = registration
        self.maxViewerQueueBytes = maxViewerQueueBytes
        self.sendFile = sendFile
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
        try check(largeAudience >= 1, "largeAudience must be at least 1, got \(largeAudience)")
        try check(writePhase >= .milliseconds(1) && writePhase <= .seconds(1), "writePhase must be 1 ms...1 s")
        try check(largeAudienceWriteInterval >= writeInterval && largeAudienceWriteInterval <= .seconds(1),
                  "largeAudienceWriteInterval must be writeInterval...1 s")
        try check((4 << 10...16 << 20).contains(maxViewerQueueBytes),
                  "maxViewerQueueBytes must be 4 KiB...16 MiB, got \(maxViewerQueueBytes)")
        if let origin {
            try check(IPv4Endpoint.splitHostPort(origin).map { $0.port > 0 } == true,
                      "origin must be HOST:PORT, got \(origin)")
        }
        if let registration {
            try check(IPv4Endpoint.splitHostPort(registration.nameService).map { $0.port > 0 } == true,
                      "the registration's name service must be HOST:PORT, got \(registration.nameService)")
            try check(registration.ttl >= .milliseconds(300) && registration.ttl <= .seconds(3600),
                      "the registration's ttl must be 0.3...3600 s, got \(registration.ttl)")
            if let advertise = registration.advertise {
                try check(registration.advertisedHost(boundPort: 0) != nil,
                          "advertise must be IPV4:PORT with an address other than 0.0.0.0, got \(advertise)")
            } else {
                try check(Host(address: host, port: 1).map { $0.ip != 0 } == true,
                          "the relay binds \(host): give the address callers reach it at (advertise)")
            }
        }
    }
}

/// How a relay registers itself with the name service (`ServiceRegistration`, message id 102): "relay at host:port
/// for (modid, cmdid), with so many viewers of its capacity", refreshed with the heartbeat (a third of `ttl`) and at
/// once when the viewers reach the capacity or fall below it. The agents' GetHost by key (id 100) then keeps a movie's
/// key on one relay until that relay is full, and moves it to the next relay on the ring.
public struct RelayRegistration: Sendable, Equatable {
    /// The module id relays register under unless told otherwise (400, as the relay's message ids 400+).
    public static let defaultModid: Int32 = 400
    /// The command id relays register under unless told otherwise.
    public static let defaultCmdid: Int32 = 1

    /// The name service, "HOST:PORT" (its TCP port, default 7778).
    public var nameService: String
    /// The module relays register under (callers ask the agent for it by key). Default 400.
    public var modid: Int32
    /// The command id of the route. Default 1.
    public var cmdid: Int32
    /// The address callers reach the relay at, "IPV4:PORT". Default nil: the relay's bound host and frame port (its
    /// HTTP port when it serves no frames).
    public var advertise: String?
    /// How long the registration lives without a heartbeat: a relay that dies leaves the route within it. Default 10 s.
    public var ttl: Duration

    public init(nameService: String = "127.0.0.1:7778", modid: Int32 = Self.defaultModid,
                cmdid: Int32 = Self.defaultCmdid, advertise: String? = nil, ttl: Duration = .seconds(10)) {
        self.nameService = nameService
        self.modid = modid
        self.cmdid = cmdid
        self.advertise = advertise
        self.ttl = ttl
    }

    /// The host registered: `advertise`, else the relay's host with `boundPort`. Nil when not a usable IPv4 address.
    func advertisedHost(boundHost: String = "", boundPort: UInt16) -> Host? {
        let found: Host?
        if let advertise {
            found = IPv4Endpoint.splitHostPort(advertise).flatMap { Host(address: $0.host, port: $0.port) }
        } else {
            found = Host(address: boundHost, port: Int(boundPort))
        }
        guard let found, found.ip != 0, found.port != 0 else { return nil }
        return found
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
    /// The most bytes any viewer's output queue held (copied because its socket did not take them): at most
    /// ``RelayConfiguration/maxViewerQueueBytes`` plus a response head or end of stream.
    public var peakViewerQueuedBytes = 0
    /// Registrations and heartbeats the name service accepted (0 without a registration).
    public var registrationsAccepted = 0
    /// Bytes sent to viewers by sendfile from the playbacks' shared memory files (part of `bytesSent`).
    public var sharedBytesSent = 0
    /// Bytes the playbacks' shared memory files hold now (chunks still in a ring or a viewer's pending output).
    public var sharedMemoryBytes = 0
    /// Batches of chunks handed to viewers (about one per viewer and beat).
    public var viewerWrites = 0
    /// Playbacks written on the large audience's beat now (``RelayConfiguration/largeAudience``).
    public var largeAudiencePlaybacks = 0
}
