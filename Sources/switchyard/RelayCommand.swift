import ArgumentParser
import Foundation
import LarsWire
import Logging
import MediaRelay
import Messaging
import Reactor
import Storage
import SwiftProtobuf
import SwitchyardCore

struct RelayCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "relay",
        abstract: "Run the media relay: movies of the catalog, read once, pushed at their own frame rate to viewers.",
        discussion: """
            Players open http://HOST:HTTP-PORT/live/NAME.ts (the shared playback; a late joiner starts at the latest \
            keyframe) or /vod/NAME.ts?start=SECONDS (a playback of its own). POST /publish/NAME.ts (or `switchyard \
            publish`) pushes a live stream that viewers watch the same way. Names come from `switchyard resource`.
            """
    )

    @Option(help: "Address to bind.") var host = "127.0.0.1"
    @Option(help: "Port of the frame protocol (0: the kernel picks).") var port = 7800
    @Option(help: "Port of HTTP (0: the kernel picks).") var httpPort = 7801
    @OptionGroup var database: DatabaseOptions
    @Option(help: "Most viewers at once; more are answered 503.") var capacity = 1000
    @Option(help: "Most publishers at once.") var maxPublishers = 16
    @Option(help: "Seconds of media a viewer may fall behind before it skips to a keyframe.")
    var maxLag = 2.0
    @Option(help: "Seconds a viewer may leave a write unfinished before it is closed.")
    var stuckTimeout = 15.0
    @Option(help: "KiB of chunks each playback's ring keeps per loop.") var ringKib = 8192
    @Option(help: """
        Milliseconds between writes to a viewer, each carrying the chunks due within the next interval (0: every \
        chunk when it is due).
        """)
    var writeIntervalMs = 250
    @Option(help: """
        A playback of a file with this many viewers or more is written on --large-audience-write-interval-ms instead \
        (back below half of it).
        """)
    var largeAudience = 50
    @Option(help: """
        Milliseconds between writes to the viewers of a large audience (--write-interval-ms...1000): \
        fewer, larger writes; its viewers hold the stream up to that much ahead.
        """)
    var largeAudienceWriteIntervalMs = 1000
    @Option(help: """
        Milliseconds of a phase of the write beats (1...1000): each viewer is written in its own phase, \
        spreading a beat's writes; longer phases make fewer, larger batches.
        """)
    var writePhaseMs = 250
    @Option(help: """
        KiB of a viewer's stream copied into its connection's queue at most; what its socket has not taken beyond \
        that waits in the shared chunks.
        """)
    var viewerQueueKib = 64
    @Option(help: """
        on: HTTP viewers are sent with sendfile(2), no copy per viewer (a file's chunks from the file, a published \
        stream's from a shared memory copy); off: every viewer's bytes are copied by writev.
        """)
    var sendfile = "on"
    @Option(help: """
        An edge relay's origin, HOST:PORT of its frame port: live names the catalog lacks are pulled from it once \
        and fanned out here.
        """)
    var origin: String?
    @Option(help: """
        Register with this name service (HOST:PORT of its TCP port) while serving, with the viewer count and \
        --capacity, so callers find the relay with GetHost by key (the movie's name) until it is full. Off unless given.
        """)
    var nameService: String?
    @Option(help: "With --name-service: the module id relays register under.")
    var registerModid = RelayRegistration.defaultModid
    @Option(help: "With --name-service: the command id.") var registerCmdid = RelayRegistration.defaultCmdid
    @Option(help: "With --name-service: the IPV4:PORT callers reach the relay at (default: --host, the frame port).")
    var advertise: String?
    @Option(help: "With --name-service: seconds the registration lives without a heartbeat.")
    var registerTtl = 10.0
    @Option(help: "I/O threads.") var threads = 1
    @Option(help: "I/O multiplexer: epoll, poll or select.") var poller: PollerKind = .epoll
    @OptionGroup var service: ServiceOptions

    var relayConfiguration: RelayConfiguration {
        RelayConfiguration(
            host: host, framePort: port, httpPort: httpPort, capacity: capacity, maxPublishers: maxPublishers,
            ring: .init(capacityBytes: ringKib << 10, maxLag: .milliseconds(Int64(maxLag * 1000)),
                        stuckTimeout: .milliseconds(Int64(stuckTimeout * 1000))),
            origin: origin, writeInterval: .milliseconds(writeIntervalMs),
            registration: nameService.map {
                RelayRegistration(nameService: $0, modid: registerModid, cmdid: registerCmdid, advertise: advertise,
                                  ttl: .milliseconds(Int64(registerTtl * 1000)))
            },
            maxViewerQueueBytes: viewerQueueKib << 10, sendFile: sendfile == "on", largeAudience: largeAudience,
            largeAudienceWriteInterval: .milliseconds(largeAudienceWriteIntervalMs),
            writePhase: .milliseconds(writePhaseMs))
    }

    func validate() throws {
        guard ["on", "off"].contains(sendfile) else { throw ValidationError("--sendfile must be on or off") }
        guard maxLag > 0, maxLag.isFinite, stuckTimeout > 0, stuckTimeout.isFinite else {
            throw ValidationError("--max-lag and --stuck-timeout must be positive seconds")
        }
        guard (1...64).contains(threads) else { throw ValidationError("--threads must be 1...64, got \(threads)") }
        guard (64...(1 << 22)).contains(ringKib) else { throw ValidationError("--ring-kib must be 64...4194304") }
        guard (4...(16 << 10)).contains(viewerQueueKib) else {
            throw ValidationError("--viewer-queue-kib must be 4...16384, got \(viewerQueueKib)")
        }
        guard registerTtl.isFinite, registerTtl > 0 else { throw ValidationError("--register-ttl must be positive") }
        guard nameService != nil || advertise == nil else { throw ValidationError("--advertise needs --name-service") }
        do {
            try relayConfiguration.validate()
        } catch {
            throw ValidationError("\(error)")
        }
    }

    func run() async throws {
        service.bootstrapLogging()
        let logger = Logger(label: "switchyard.relay")
        let pool = try await database.openReadyPool(logger: logger)
        do {
            try await ResourceCatalog.create(on: pool)
        } catch {
            await pool.close()
            throw CommandFailure("cannot use the database \(pool.url): \(error)")
        }
        let group = try EventLoopGroup(ioLoops: threads, configuration: LoopConfiguration(poller: poller),
                                       logger: logger)
        let relay = MediaRelayServer(group: group, configuration: relayConfiguration, pool: pool, logger: logger)
        let addresses: (frames: SocketAddress?, http: SocketAddress?)
        do {
            addresses = try relay.start()
        } catch {
            await group.shutdown()
            await pool.close()
            throw CommandFailure("relay: cannot listen on \(host) (ports \(port), \(httpPort)): \(error)")
        }
        try await runServices(
            [EventLoopGroupService(group: group), pool, relay],
            announcing: "relay listening on frames \(addresses.frames.map(\.description) ?? "-"), "
                + "http \(addresses.http.map(\.description) ?? "-") (db \(pool.url)"
                + (origin.map { ", origin \($0)" } ?? "")
                + (nameService.map { ", registered with \($0) as \(registerModid)/\(registerCmdid))" } ?? ")"),
            logger: logger)
        let s = relay.statistics
        logger.info("relay totals", metadata: [
            "viewers.served": "\(s.viewersServed)", "viewers.refused": "\(s.viewersRefused)",
            "playbacks.started": "\(s.playbacksStarted)", "file.bytes_read": "\(s.fileBytesRead)",
            "bytes.sent": "\(s.bytesSent)", "drops": "\(s.drops)", "stuck_closed": "\(s.stuckClosed)",
        ])
    }
}

/// `--relay HOST:PORT`, the frame port of a relay (`watch`, `publish`).
struct RelayAddressOption: ParsableArguments {
    @Option(name: .customLong("relay"), help: "The relay's frame port, HOST:PORT.") var address = "127.0.0.1:7800"

    func validate() throws {
        guard IPv4Endpoint.splitHostPort(address).map({ $0.port > 0 }) == true else {
            throw ValidationError("--relay must be HOST:PORT, got \(address)")
        }
    }

    /// Connects to the relay's frame port on a loop group of its own (shut it down after the client); a failure is
    /// `command`'s one line.
    func connect(command: String) async throws -> (client: AsyncFrameClient, group: EventLoopGroup) {
        let (host, port) = IPv4Endpoint.splitHostPort(address)!
        let group = try EventLoopGroup(ioLoops: 1)
        do {
            return (try await AsyncFrameClient.connect(host: host, port: port, loop: group.next()), group)
        } catch {
            await group.shutdown()
            throw CommandFailure("\(command): cannot connect to \(host):\(port): \(error)")
        }
    }
}

/// `switchyard watch`: a viewer of the frame protocol that writes the stream's bytes to a file or stdout.
struct WatchCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "watch",
        abstract: "Watch a stream of a relay: its MPEG-TS bytes to stdout (`| ffplay -`) or a file.",
        discussion: "Ends at the end of the stream (exit 0); an error of the relay is one line and exit 1."
    )

    @Argument(help: "The resource (or published stream) name.") var name: String
    @OptionGroup var relay: RelayAddressOption
    @Flag(help: "On demand: a playback of its own (from --start) instead of the shared live one.") var vod = false
    @Option(help: "With --vod: seconds from the start of the movie.") var start = 0.0
    @Option(help: "Live: the room (playbacks of one movie in different rooms are independent).") var room = ""
    @Option(help: "Where the stream goes: a file, or - for stdout.") var output = "-"

    func validate() throws {
        guard ResourceCatalog.isValidName(name) else { throw ValidationError("\(ResourceCatalogError.badName(name))") }
        guard start >= 0, start.isFinite else { throw ValidationError("--start must be 0 or more seconds") }
    }

    func run() async throws {
        let out = try Self.openOutput(output)
        let (client, group) = try await relay.connect(command: "watch")
        defer { group.shutdown() }
        let subscribe = Switchyard_Media_Subscribe.with {
            $0.resource = name
            $0.mode = vod ? .vod : .live
            $0.startMs = UInt64(start * 1000)
            $0.room = room
        }
        try await client.send(subscribe, id: MediaMessageID.subscribe)
        var chunks = 0
        do {
            for try await frame in client.frames {
                switch frame.messageID {
                case MediaMessageID.chunk.rawValue:
                    let chunk = try frame.decode(as: Switchyard_Media_Chunk.self)
                    out.write(chunk.data)
                    chunks += 1
                case MediaMessageID.endOfStream.rawValue:
                    await client.close()
                    try? out.close()
                    return
                case MediaMessageID.error.rawValue:
                    let error = try frame.decode(as: Switchyard_Media_Error.self)
                    throw CommandFailure("watch: the relay refused \(name): \(error.reason)")
                default:
                    continue
                }
            }
        } catch let failure as CommandFailure {
            throw failure
        } catch {
            throw CommandFailure("watch: the stream broke after \(chunks) chunks: \(error)")
        }
        throw CommandFailure("watch: the relay closed the stream after \(chunks) chunks, without an end of stream")
    }

    /// Stdout for `-`, else the file, created or emptied.
    private static func openOutput(_ output: String) throws -> FileHandle {
        if output == "-" { return FileHandle.standardOutput }
        guard FileManager.default.createFile(atPath: output, contents: nil),
              let file = FileHandle(forWritingAtPath: output) else {
            throw CommandFailure("watch: cannot write \(output)")
        }
        return file
    }
}

/// `switchyard publish`: pushes a TS file (or stdin) to a relay as a live stream, at the stream's own pace.
struct PublishCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "publish",
        abstract: "Publish a live stream to a relay: a TS file (or - for stdin), sent at its own frame rate.",
        discussion: "Viewers watch it as /live/NAME.ts or `switchyard watch NAME`. Ends at the end of the input."
    )

    @Argument(help: "The name viewers ask for.") var name: String
    @Argument(help: "The MPEG-TS file, or - for stdin (sent as it comes: a live encoder paces itself).")
    var file: String
    @OptionGroup var relay: RelayAddressOption
    @Option(help: "The room.") var room = ""

    func validate() throws {
        guard ResourceCatalog.isValidName(name) else { throw ValidationError("\(ResourceCatalogError.badName(name))") }
    }

    func run() async throws {
        let input = try Self.openInput(file)
        let (client, group) = try await relay.connect(command: "publish")
        defer { group.shutdown() }
        let publish = Switchyard_Media_Publish.with { $0.resource = name; $0.room = room }
        try await client.send(publish, id: MediaMessageID.publish)
        // A refusal comes back as an error frame; watch for it while sending.
        let refusal = Task { () -> String? in
            for try await frame in client.frames where frame.messageID == MediaMessageID.error.rawValue {
                return (try? frame.decode(as: Switchyard_Media_Error.self))?.reason ?? "an error"
            }
            return nil
        }
        // A file is paced by its own clock (a stdin encoder paces itself): chunks are sent when due.
        var chunker = TSChunker()
        var pacer = PlaybackPacer()
        let paced = file != "-"
        var sent = 0
        func send(_ chunk: MediaChunk) async throws {
            if paced {
                let due = pacer.due(chunk, now: SystemInfo.monotonicNanoseconds())
                let now = SystemInfo.monotonicNanoseconds()
                if due > now { try await Task.sleep(for: .nanoseconds(Int64(due - now))) }
            }
            var message = Switchyard_Media_Chunk()
            message.data = Data(chunk.bytes)
            message.time90Khz = chunk.time
            message.keyframe = chunk.keyframe
            try await client.send(message, id: MediaMessageID.publishChunk)
            sent += 1
        }
        do {
            while true {
                let data = input.readData(ofLength: 64 << 10)
                if data.isEmpty { break }
                for chunk in chunker.feed(data) { try await send(chunk) }
            }
            if let last = chunker.finish() { try await send(last) }
        } catch {
            refusal.cancel()
            if let reason = try? await refusal.value {
                throw CommandFailure("publish: the relay refused \(name): \(reason)")
            }
            throw CommandFailure("publish: the connection broke after \(sent) chunks: \(error)")
        }
        if chunker.chunks == 0 {
            throw CommandFailure("publish: \(file) is not a stream the relay can pace: "
                                 + ((try? chunker.check()).map { "no frame" } ?? "no clock"))
        }
        await client.close()
        refusal.cancel()
        if let reason = try? await refusal.value {
            throw CommandFailure("publish: the relay refused \(name): \(reason)")
        }
        print("published \(name): \(sent) chunks")
    }

    /// Stdin for `-`, else the file.
    private static func openInput(_ file: String) throws -> FileHandle {
        if file == "-" { return FileHandle.standardInput }
        guard let handle = FileHandle(forReadingAtPath: file) else {
            throw CommandFailure("publish: cannot read \(file)")
        }
        return handle
    }
}
