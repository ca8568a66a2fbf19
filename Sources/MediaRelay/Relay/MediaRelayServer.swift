#if canImport(Glibc)
import Glibc
#endif
import LoadBalanceClient
import LoadBalancing
import Logging
import Messaging
import Reactor
import ServiceLifecycle
import Storage
import SwitchyardCore
import Synchronization

/// The media relay: reads a movie once and pushes it, at the stream's own frame rate, to every viewer, over HTTP
/// (`GET /live/NAME.ts`, `GET /vod/NAME.ts?start=SECONDS`: what ffplay, mpv, VLC and ffmpeg open as they are) and
/// over the frame protocol (ids 400+, `MediaMessageID`). Publishers push a live stream in (`POST /publish/NAME.ts`,
/// or a publish frame) that viewers watch the same way.
///
///     file --reader (its queue), once--> Playback (home loop: read-ahead, pacing by the stream's clock)
///          --each due chunk--> LoopFanout on every loop with viewers (ChunkRing: shared chunks, a cursor per viewer)
///          --writes straight from the shared chunks--> viewers' sockets
///
/// Live: one playback per (resource, room), shared; a late joiner starts at the latest keyframe; nobody watching for
/// `idleLivePlayback` stops it. On demand: a playback per viewer, from the keyframe at or before its start. A viewer
/// that does not drain skips to keyframes and is closed when stuck (`ChunkRing`); the reader never waits for anyone.
/// Names are looked up in the catalog (`ResourceCatalog`) through the pool, off the loops; a published name is
/// served while its publisher sends.
///
/// With ``RelayConfiguration/registration``, the relay registers itself with the name service while it serves
/// (`ServiceRegistration`), reporting its viewers and capacity, and takes the registration back on shutdown.
///
/// A `Service`: ``run()`` binds (unless ``start()`` did) and serves until graceful shutdown, then stops accepting,
/// ends every playback (viewers get the end of their stream) and closes the connections.
public final class MediaRelayServer: Service, Sendable {
    public let configuration: RelayConfiguration
    private let group: EventLoopGroup
    private let pool: ConnectionPool?
    let logger: Logger
    let counters = RelayCounters()
    private let playbacks = Mutex<[PlaybackKey: Playback]>([:])
    /// Live playbacks being looked up and opened (the first viewer's task; the others wait for it).
    private let startingLive = Mutex<[PlaybackKey: Task<Result<Playback, Refusal>, Never>]>([:])
    private let nextViewerID = Atomic<UInt64>(1)
    private let running = Atomic<Bool>(false)
    private let httpServer: TCPServer?
    private let frameServer: FramedServer?
    private let started = Mutex<(frames: SocketAddress?, http: SocketAddress?)?>(nil)
    /// The registration with the name service while serving (nil: none configured, not started, or stopped).
    private let registration = Mutex<ServiceRegistration?>(nil)

    /// Creates the relay; nothing is bound until ``start()`` or ``run()``.
    ///
    /// - Parameters:
    ///   - group: The loops of the viewers' connections (and the playbacks: each on one of them).
    ///   - configuration: Ports, capacity, ring, pacing (see ``RelayConfiguration/validate()``).
    ///   - pool: The database with the Resource table (nil: only published streams are served).
    ///   - logger: Start, stop, refusals and failed playbacks (info and below).
    public init(group: EventLoopGroup, configuration: RelayConfiguration, pool: ConnectionPool?, logger: Logger) {
        self.configuration = configuration
        self.group = group
        self.pool = pool
        self.logger = logger
        let handlers = RelayHandlers()
        if let port = configuration.httpPort {
            httpServer = TCPServer(
                group: group,
                configuration: ServerConfiguration(host: configuration.host, port: port,
                                                   maxConnections: configuration.capacity * 2 + 64,
                                                   connection: ConnectionOptions(noDelay: false)),
                callbacks: ConnectionCallbacks(
                    onConnect: { handlers.relay?.httpConnected($0) },
                    onData: { connection, bytes in
                        guard let relay = handlers.relay else {
                            _ = bytes.consumeAll()
                            return
                        }
                        relay.httpData(connection, &bytes)
                    },
                    onClose: { handlers.relay?.connectionClosed($0) }),
                logger: logger)
        } else {
            httpServer = nil
        }
        if let port = configuration.framePort {
            let router = MessageRouter<TCPConnection>()
            // Cannot throw: a fresh router with distinct ids.
            try! router.on(MediaMessageID.subscribe, as: Switchyard_Media_Subscribe.self) { request, message in
                handlers.relay?.frameSubscribe(request, message.connection)
            }
            try! router.on(MediaMessageID.publish, as: Switchyard_Media_Publish.self) { request, message in
                handlers.relay?.framePublish(request, message.connection)
            }
            try! router.on(MediaMessageID.publishChunk, as: Switchyard_Media_Chunk.self) { chunk, message in
                handlers.relay?.framePublishedChunk(chunk, message.connection)
            }
            frameServer = FramedServer(
                group: group,
                configuration: FramedServerConfiguration(
                    server: ServerConfiguration(host: configuration.host, port: port,
                                                maxConnections: configuration.capacity * 2 + 64),
                    // A viewer only reads after its subscribe: silence is its normal state (stuck viewers are closed
                    // by the ring, silent publishers by their own timeout).
                    idleTimeout: nil),
                router: router, logger: logger,
                onConnect: { $0.context = RelayConnection(kind: .frames) },
                onClose: { handlers.relay?.connectionClosed($0) })
        } else {
            frameServer = nil
        }
        handlers.relay = self
    }

    /// Binds both ports and starts accepting; returns the bound addresses. Idempotent. Throws
    /// ``RelayError/invalidConfiguration(_:)`` or the bind error. Not on a loop thread.
    @discardableResult
    public func start() throws -> (frames: SocketAddress?, http: SocketAddress?) {
        if let addresses = started.withLock({ $0 }) { return addresses }
        try configuration.validate()
        let frames = try frameServer?.start()
        let http: SocketAddress?
        do {
            http = try httpServer?.start()
        } catch {
            frameServer?.shutdown(timeout: .seconds(1))
            throw error
        }
        let addresses = (frames, http)
        if let settings = configuration.registration {
            do {
                try register(settings, port: frames?.port ?? http!.port)
            } catch {
                frameServer?.shutdown(timeout: .seconds(1))
                httpServer?.shutdown(timeout: .seconds(1))
                throw error
            }
        }
        started.withLock { $0 = addresses }
        logger.info("relay listening", metadata: [
            "frames.address": "\(frames.map(\.description) ?? "-")",
            "http.address": "\(http.map(\.description) ?? "-")",
        ])
        return addresses
    }

    /// Starts the registration with the name service, with the viewers and capacity of now.
    private func register(_ settings: RelayRegistration, port: UInt16) throws {
        // validate() checked the address; the port is the bound one.
        let host = settings.advertisedHost(boundHost: configuration.host, boundPort: port)!
        let (namesHost, namesPort) = IPv4Endpoint.splitHostPort(settings.nameService)!
        let made = try ServiceRegistration(
            loop: group.next(), nameServiceHost: namesHost, nameServicePort: namesPort, modid: settings.modid,
            cmdid: settings.cmdid, host: host, ttl: settings.ttl, logger: logger)
        registration.withLock { $0 = made }
        reportLoad()
        made.start()
    }

    /// Hands the viewer count to the registration (sent with the next heartbeat; at once when the relay becomes full
    /// or has room again). Any thread.
    private func reportLoad() {
        guard configuration.registration != nil else { return }
        let capacity = UInt32(configuration.capacity)
        // Read and handed over under the lock: the last call reads the count after every change before it, so what
        // the registration keeps is the latest count whatever the order the loops call in.
        registration.withLock { current in
            let viewers = UInt32(clamping: max(0, counters.viewers.load(ordering: .relaxed)))
            current?.updateLoad(HostLoad(load: viewers, capacity: capacity))
        }
    }

    /// The bound addresses once started.
    public var frameAddress: SocketAddress? { started.withLock { $0?.frames } }
    public var httpAddress: SocketAddress? { started.withLock { $0?.http } }

    /// Runs until graceful shutdown or cancellation, then stops (``shutdown()``).
    public func run() async throws {
        if running.exchange(true, ordering: .acquiringAndReleasing) { throw RelayError.alreadyRunning }
        if started.withLock({ $0 }) == nil {
            _ = try await runOnDedicatedThread(name: "sy-relay-bind") { [self] in Result { try start() } }.get()
        }
        try? await gracefulShutdown()
        await runOnDedicatedThread(name: "sy-relay-stop") { [self] in shutdown() }
    }

    /// Stops accepting, ends every playback (each viewer gets the end of its stream) and closes the connections
    /// (flushing, bounded). Blocks; not on a loop thread.
    public func shutdown() {
        // Out of the route first, so no caller is sent here while the relay winds down.
        registration.withLock { current in defer { current = nil }; return current }?.stop()
        let all = playbacks.withLock { Array($0.values) }
        for playback in all { playback.loop.execute { playback.stop(reason: "the relay is shutting down") } }
        httpServer?.shutdown(timeout: .seconds(2))
        frameServer?.shutdown(timeout: .seconds(2))
        logger.info("relay stopped")
    }

    /// The counters.
    public var statistics: RelayStatistics {
        let c = counters
        return RelayStatistics(
            viewers: c.viewers.load(ordering: .relaxed), viewersServed: c.viewersServed.load(ordering: .relaxed),
            viewersRefused: c.viewersRefused.load(ordering: .relaxed), playbacks: c.playbacks.load(ordering: .relaxed),
            playbacksStarted: c.playbacksStarted.load(ordering: .relaxed),
            fileBytesRead: c.fileBytesRead.load(ordering: .relaxed),
            chunksAppended: c.chunksAppended.load(ordering: .relaxed), bytesSent: c.bytesSent.load(ordering: .relaxed),
            drops: c.drops.load(ordering: .relaxed), stuckClosed: c.stuckClosed.load(ordering: .relaxed),
            badRequests: c.badRequests.load(ordering: .relaxed), notFound: c.notFound.load(ordering: .relaxed),
            publishers: c.publishers.load(ordering: .relaxed),
            peakViewerQueuedBytes: c.peakViewerQueuedBytes.load(ordering: .relaxed),
            registrationsAccepted: registration.withLock { $0 }?.acceptedCount ?? 0,
            sharedBytesSent: c.sharedBytesSent.load(ordering: .relaxed),
            sharedMemoryBytes: c.sharedMemoryBytes.load(ordering: .relaxed),
            viewerWrites: c.viewerWrites.load(ordering: .relaxed),
            largeAudiencePlaybacks: c.largeAudiencePlaybacks.load(ordering: .relaxed))
    }

    // MARK: Finding and starting playbacks

    /// Why a request for a stream failed.
    enum Refusal: Error {
        case notFound(String)
        case full
        case badMedia(String)
        case alreadyPublished(String)
        case internalError(String)
    }

    /// The live playback of (name, room), started from the catalog's file when none runs. Off the loops. Viewers that
    /// ask at the same time for a playback that does not run yet share one lookup (and one playback).
    func livePlayback(name: String, room: String) async -> Result<Playback, Refusal> {
        let key = PlaybackKey(resource: name, room: room, mode: .live)
        // Lock order: playbacks, then startingLive (the lookup task takes them one at a time).
        let found = playbacks.withLock { table -> (Playback?, Task<Result<Playback, Refusal>, Never>?) in
            if let running = table[key] { return (running, nil) }
            return (nil, startingLive.withLock { starting in
                if let other = starting[key] { return other }
                let task = Task { [self] () -> Result<Playback, Refusal> in
                    var result = await openFile(name: name).map { reader -> Playback in
                        makePlayback(key: key, source: .file(reader))
                    }
                    if case .failure(.notFound) = result, let origin = configuration.origin {
                        result = await pullFromOrigin(origin, name: name, room: room, key: key)
                    }
                    if case .success(let made) = result { playbacks.withLock { $0[key] = made } }
                    _ = startingLive.withLock { $0.removeValue(forKey: key) }
                    return result
                }
                starting[key] = task
                return task
            })
        }
        if let running = found.0 { return .success(running) }
        return await found.1!.value
    }

    /// An edge's playback of a live stream of its origin: one subscription to the origin, whose chunks are cut again
    /// here and fanned out to the edge's viewers. The origin's first frame decides: a chunk starts the playback, an
    /// error is the refusal.
    private func pullFromOrigin(_ origin: String, name: String, room: String, key: PlaybackKey) async
        -> Result<Playback, Refusal>
    {
        let (host, port) = IPv4Endpoint.splitHostPort(origin)!
        let client: AsyncFrameClient
        do {
            client = try await AsyncFrameClient.connect(host: host, port: port, loop: group.next(),
                                                        bufferCapacity: 1024)
        } catch {
            logger.info("relay: the origin cannot be reached", metadata: [
                "origin.address": "\(origin)", "error.description": "\(error)",
            ])
            return .failure(.internalError("the origin \(origin) cannot be reached"))
        }
        var subscribe = Switchyard_Media_Subscribe()
        subscribe.resource = name
        subscribe.room = room
        subscribe.mode = .live
        var frames = client.frames.makeAsyncIterator()
        let first: InboundFrame?
        do {
            try await client.send(subscribe, id: MediaMessageID.subscribe)
            first = try await frames.next()
        } catch {
            first = nil
        }
        guard let first, first.messageID == MediaMessageID.chunk.rawValue,
              let chunk = try? first.decode(as: Switchyard_Media_Chunk.self) else {
            await client.close()
            guard let first, first.messageID == MediaMessageID.error.rawValue,
                  let error = try? first.decode(as: Switchyard_Media_Error.self) else {
                return .failure(.internalError("the origin \(origin) ended the stream before its first chunk"))
            }
            switch error.code {
            case .noSuchResource: return .failure(.notFound(name))
            case .full: return .failure(.full)
            case .badMedia: return .failure(.badMedia(error.reason))
            default: return .failure(.internalError("the origin refused: \(error.reason)"))
            }
        }
        let playback = makePlayback(key: key, source: .origin(close: { Task { await client.close() } }))
        var chunker = TSChunker()
        playback.push(chunker.feed(chunk.data))
        Task { [frames] in
            var frames = frames
            var reason = "the origin closed the stream"
            while let frame = try? await frames.next() {
                if frame.messageID == MediaMessageID.chunk.rawValue,
                   let chunk = try? frame.decode(as: Switchyard_Media_Chunk.self) {
                    let chunks = chunker.feed(chunk.data)
                    if !chunks.isEmpty { playback.push(chunks) }
                } else if frame.messageID == MediaMessageID.endOfStream.rawValue {
                    reason = "the origin's stream ended"
                    break
                }
            }
            if let last = chunker.finish() { playback.push([last]) }
            await client.close()
            playback.endPush(reason: reason)
        }
        return .success(playback)
    }

    /// A playback of its own for one viewer, from `start`.
    func vodPlayback(name: String, start: Duration, viewer: UInt64) async -> Result<Playback, Refusal> {
        switch await openFile(name: name, start: start) {
        case .failure(let refusal):
            return .failure(refusal)
        case .success(let reader):
            let key = PlaybackKey(resource: name, room: "", mode: .vod(viewer: viewer))
            let playback = makePlayback(key: key, source: .file(reader))
            playbacks.withLock { $0[key] = playback }
            return .success(playback)
        }
    }

    /// A published stream: a push playback, unless somebody publishes the name already.
    func publishedPlayback(name: String, room: String) -> Result<Playback, Refusal> {
        let key = PlaybackKey(resource: name, room: room, mode: .live)
        guard counters.publishers.load(ordering: .relaxed) < configuration.maxPublishers else { return .failure(.full) }
        let made = makePlayback(key: key, source: .push)
        let ok = playbacks.withLock { table -> Bool in
            if let existing = table[key], !existing.finished { return false }
            table[key] = made
            return true
        }
        guard ok else {
            made.loop.execute { made.stop(reason: "never used") }
            return .failure(.alreadyPublished(name))
        }
        counters.add(.publishers)
        return .success(made)
    }

    private func makePlayback(key: PlaybackKey, source: Playback.Source) -> Playback {
        Playback(key: key, loop: group.next(), source: source, configuration: configuration, counters: counters,
                 logger: logger, onFinished: { [weak self] playback in
                     guard let self else { return }
                     self.playbacks.withLock { table in
                         if table[playback.key] === playback { table[playback.key] = nil }
                     }
                     if case .push = source { self.counters.add(.publishers, -1) }
                 })
    }

    /// Looks the name up and opens its file (probed first: a file that is not MPEG-TS with a clock is refused).
    private func openFile(name: String, start: Duration? = nil) async -> Result<MediaFileReader, Refusal> {
        guard let pool else { return .failure(.notFound(name)) }
        let resource: MediaResource?
        do {
            resource = try await ResourceCatalog.find(name: name, on: pool)
        } catch {
            logger.info("relay: the catalog cannot be read", metadata: ["error.description": "\(error)"])
            return .failure(.internalError("the catalog cannot be read"))
        }
        guard let resource else { return .failure(.notFound(name)) }
        let path = resource.path
        let readSize = configuration.readSize
        return await runOnDedicatedThread(name: "sy-relay-open") { () -> Result<MediaFileReader, Refusal> in
            do {
                _ = try MediaProbe.probe(path: path)
                return .success(try MediaFileReader(path: path, start: start, readSize: readSize))
            } catch {
                return .failure(.badMedia("\(error)"))
            }
        }
    }

    /// Takes a viewer slot; false when the relay is full (counted).
    func takeViewerSlot() -> Bool {
        let now = counters.viewers.wrappingAdd(1, ordering: .relaxed).newValue
        if now > configuration.capacity {
            counters.viewers.wrappingSubtract(1, ordering: .relaxed)
            counters.add(.viewersRefused)
            return false
        }
        counters.add(.viewersServed)
        reportLoad()
        return true
    }

    /// Gives the connection's viewer slot back, if it holds one.
    func releaseViewerSlot(_ state: RelayConnection) {
        guard state.holdsViewerSlot else { return }
        state.holdsViewerSlot = false
        counters.viewers.wrappingSubtract(1, ordering: .relaxed)
        reportLoad()
    }

    func newViewerID() -> UInt64 { nextViewerID.wrappingAdd(1, ordering: .relaxed).oldValue }

    /// A connection closed: its viewer leaves its playback, its publisher ends its stream, its slot is freed.
    func connectionClosed(_ connection: TCPConnection) {
        guard let state = connection.context as? RelayConnection else { return }
        state.headTimer?.cancel()
        switch state.phase {
        case .viewing(let playback, let id):
            playback.removeViewer(id, on: connection.loop)
        case .publishing(let publisher):
            publisher.timer?.cancel()
            publisher.playback.endPush(reason: "the publisher left")
        case .head, .resolving, .closing:
            break
        }
        releaseViewerSlot(state)
        state.phase = .closing
    }

    /// Finds the stream a viewer asked for, off the loops, and comes back on the connection's loop: `found` with the
    /// playback when the viewer is still there waiting (it then starts with `attach`), `refused` otherwise. An
    /// on-demand playback made for a viewer that has left meanwhile is stopped.
    func resolveViewer(live: Bool, name: String, room: String, start: Duration, _ connection: TCPConnection,
                       _ state: RelayConnection, found: @escaping @Sendable (Playback) -> Void,
                       refused: @escaping @Sendable (Refusal) -> Void) {
        let viewer = newViewerID()
        let loop = connection.loop
        Task { [self] in
            let result = live ? await livePlayback(name: name, room: room)
                : await vodPlayback(name: name, start: start, viewer: viewer)
            loop.execute {
                switch result {
                case .success(let playback):
                    guard connection.isActive, case .resolving = state.phase else {
                        if !live { playback.loop.execute { playback.stop(reason: "its viewer left") } }
                        return
                    }
                    found(playback)
                case .failure(let refusal):
                    refused(refusal)
                }
            }
        }
    }

    /// Whether a resource and room name may be asked for (the catalog's rule; a room has the same byte bound).
    static func validNames(_ resource: String, _ room: String) -> Bool {
        ResourceCatalog.isValidName(resource) && room.utf8.count <= ResourceCatalog.maxNameBytes
    }

    /// Starts streaming `playback` to the connection (on its loop) with `sink`.
    func attach(_ connection: TCPConnection, _ state: RelayConnection, to playback: Playback,
                sink: @escaping () -> any ViewerSink) {
        let id = newViewerID()
        state.phase = .viewing(playback, id)
        playback.addViewer(id, sink())
    }

    func logRefusal(_ what: String, _ connection: TCPConnection, _ reason: String) {
        logger.debug("relay: request refused", metadata: [
            "peer.address": "\(connection.peerAddress)", "request": "\(what)", "reason": "\(reason)",
        ])
    }
}

/// Breaks the cycle between the servers' callbacks and the relay that owns the servers.
final class RelayHandlers: @unchecked Sendable {  // set once in init, before any server starts
    weak var relay: MediaRelayServer?
}

/// What the relay knows of one connection (its `context`). Loop-confined to the connection's loop.
final class RelayConnection: @unchecked Sendable {  // used on its connection's loop only
    enum Kind { case http, frames }
    enum Phase {
        case head(HTTPHeadParser)
        case resolving
        case viewing(Playback, UInt64)
        case publishing(Publisher)
        case closing
    }

    let kind: Kind
    var phase: Phase
    var headTimer: TimerHandle?
    var holdsViewerSlot = false

    init(kind: Kind, maxHeadBytes: Int = HTTPHeadParser.defaultMaxHeadBytes) {
        self.kind = kind
        phase = kind == .http ? .head(HTTPHeadParser(maxHeadBytes: maxHeadBytes)) : .resolving
    }
}

/// A publisher's connection: its bytes cut into chunks and pushed into its playback.
final class Publisher: @unchecked Sendable {  // used on its connection's loop only
    let playback: Playback
    var body: HTTPBodyDecoder?
    var chunker = TSChunker()
    var lastData: UInt64
    var timer: TimerHandle?
    var bytes = 0

    init(playback: Playback, body: HTTPBodyDecoder?, now: UInt64) {
        self.playback = playback
        self.body = body
        lastData = now
    }

    /// Cuts `bytes` of the stream; nil when the stream is not one the relay can pace (the reason).
    func take(_ bytes: some Collection<UInt8>, now: UInt64) -> String? {
        lastData = now
        self.bytes += bytes.count
        let chunks = chunker.feed(bytes)
        if !chunks.isEmpty {
            playback.push(chunks)
        } else if chunker.chunks == 0 && self.bytes >= TSChunker.maxUntimedBytes {
            // A megabyte and not one frame with a timestamp: not a stream the relay can pace.
            do {
                try chunker.check()
                return "no frame with a timestamp in the first \(self.bytes) bytes"
            } catch {
                return error.description
            }
        }
        return nil
    }
}
