import Foundation
import LarsWire
@testable import MediaRelay
import Messaging
import Reactor
import Storage
import SwiftProtobuf
import Synchronization
import Testing
import TestSupport

/// The chunks the relay cuts a file into (what a viewer from the start gets, in order).
private func chunkCount(_ url: URL) throws -> Int {
    var chunker = TSChunker()
    var n = chunker.feed(try TestMedia.bytes(url)).count
    if chunker.finish() != nil { n += 1 }
    return n
}

extension RelaySocketTests {
    @Suite("Media relay: players, pacing, one reader")
    struct RelayTests {
        @Test("ffmpeg plays a movie on demand over HTTP without a message; ffprobe reads its codecs and 25 fps live",
              arguments: PollerKind.allCases)
        func realPlayers(poller: PollerKind) async throws {
            let movie = try TestMedia.movie(seconds: 3)
            let running = try await RunningRelay(poller: poller, movies: ["movie": movie])
            let played = await runTool("ffmpeg", ["-v", "error", "-i", "\(running.httpBase)/vod/movie.ts",
                                                  "-f", "null", "-"])
            #expect(played.status == 0 && played.errors.isEmpty, "\(played.errors)")
            let probed = await runTool("ffprobe", ["-v", "error", "-show_entries", "stream=codec_name,r_frame_rate",
                                                   "-of", "compact=p=0:nk=1", "\(running.httpBase)/live/movie.ts"])
            #expect(probed.status == 0, "\(probed.errors)")
            #expect(probed.output.contains("h264|25/1") && probed.output.contains("mp2|"), "\(probed.output)")
            await running.stop()
        }

        @Test("a 10 s movie relayed live reaches its viewer over 10 s (within 5%), 25 chunks a second, whole",
              arguments: PollerKind.allCases)
        func pacedAtTheMoviesRate(poller: PollerKind) async throws {
            let movie = try TestMedia.movie(seconds: 10)
            let file = try TestMedia.bytes(movie)
            let running = try await RunningRelay(poller: poller, movies: ["movie": movie])
            let response = try await HTTPViewer.get("/live/movie.ts", port: running.httpPort)
            #expect(response.status == 200 && response.headers["content-type"] == "video/mp2t" && response.ended)
            // The first chunk is due at once, the last one 249 frames later: 9.96 s of the stream's own clock (each
            // write carries the chunks due within the next 250 ms beat).
            let spread = response.lastByte - response.firstByte
            #expect(spread >= 9.96 * 0.95, "delivered in \(spread) s: faster than the movie")
            #expect(spread <= 9.96 * 1.05, "delivered in \(spread) s")
            // Every byte of the file, after the program tables the viewer starts with.
            #expect(Array(response.body.suffix(file.count)) == file)
            #expect(packetPIDs(response.body, count: 1) == [0])
            let chunks = try chunkCount(movie)
            #expect(chunks == 250)
            #expect(await eventually { running.relay.statistics.chunksAppended == chunks })
            await running.stop()
        }

        @Test("on its beat a live playback wakes its loop about once a phase, not per chunk; with no beat, per chunk",
              arguments: PollerKind.allCases)
        func wakesOncePerPhase(poller: PollerKind) async throws {
            let movie = try TestMedia.movie(seconds: 5)
            var onBeat = 0
            var perChunk = 0
            for beat in [true, false] {
                let running = try await RunningRelay(poller: poller, movies: ["movie": movie]) { configuration in
                    if !beat { configuration.writeInterval = .zero }
                }
                let loop = running.group.ioLoops[0]
                let viewer = try HTTPViewer(port: running.httpPort)
                // The loop's iterations when the viewer has had its first second and its third of the stream.
                let marks = Mutex<[UInt64]>([])
                let start = ContinuousClock.now
                let response = try await onThread { () -> Result<HTTPViewer.Response, any Error> in
                    Result {
                        try viewer.request("/live/movie.ts")
                        return try viewer.read { _ in
                            let elapsed = (ContinuousClock.now - start).seconds
                            marks.withLock { marks in
                                if marks.count < 2 && elapsed >= 1.0 + 2.0 * Double(marks.count) {
                                    marks.append(loop.iterations)
                                }
                            }
                        }
                    }
                }.get()
                #expect(response.status == 200 && response.ended)
                let (first, last) = marks.withLock { ($0.first ?? 0, $0.last ?? 0) }
                let wakes = Int(last &- first)
                #expect(marks.withLock { $0.count } == 2)
                if beat { onBeat = wakes } else { perChunk = wakes }
                await running.stop()
            }
            // 250 ms phases: 8 in those 2 s, plus the reader's and the viewer's events; a wake a chunk: 50.
            #expect(perChunk >= 40, "\(perChunk) loop iterations in 2 s with no beat (a chunk every 40 ms)")
            #expect(onBeat * 2 <= perChunk, "\(onBeat) loop iterations in 2 s on the beat, \(perChunk) without")
        }

        @Test("the file is read once per playback, with 1 viewer and with 50", arguments: [1, 50])
        func readOnce(viewers: Int) async throws {
            let movie = try TestMedia.movie(seconds: 3)
            let size = try TestMedia.bytes(movie).count
            let running = try await RunningRelay(poller: .epoll, movies: ["movie": movie])
            let responses = try await withThrowingTaskGroup(of: HTTPViewer.Response.self) { group in
                for _ in 0..<viewers {
                    group.addTask { try await HTTPViewer.get("/live/movie.ts", port: running.httpPort) }
                }
                return try await group.reduce(into: []) { $0.append($1) }
            }
            #expect(responses.count == viewers)
            #expect(responses.allSatisfy { $0.status == 200 && $0.ended && $0.body.count > size / 2 })
            let s = running.relay.statistics
            #expect(s.playbacksStarted == 1, "\(s)")
            #expect(s.fileBytesRead == size, "read \(s.fileBytesRead) bytes of a \(size)-byte file")
            #expect(s.viewersServed == viewers)
            #expect(await eventually { running.relay.statistics.viewers == 0 }, "every viewer's slot is given back")
            await running.stop()
        }

        @Test("a large audience is written on the long beat (about one write a second each), a small one on the short",
              arguments: [2, 4])
        func largeAudienceBeat(viewers: Int) async throws {
            let movie = try TestMedia.movie(seconds: 4)
            let file = try TestMedia.bytes(movie)
            let running = try await RunningRelay(poller: .epoll, movies: ["movie": movie]) {
                $0.writeInterval = .milliseconds(250)
                $0.largeAudience = 3
                $0.largeAudienceWriteInterval = .seconds(1)
            }
            let responses = try await withThrowingTaskGroup(of: HTTPViewer.Response.self) { group in
                for _ in 0..<viewers {
                    group.addTask { try await HTTPViewer.get("/live/movie.ts", port: running.httpPort) }
                }
                return try await group.reduce(into: []) { $0.append($1) }
            }
            // Every viewer gets the stream from its start to the end of the file (they join as it starts).
            #expect(responses.allSatisfy { $0.status == 200 && $0.ended && Array($0.body.suffix(file.count)) == file })
            let s = running.relay.statistics
            let perViewer = Double(s.viewerWrites) / Double(viewers)
            if viewers >= 3 {
                // 4 s of media on a 1 s beat: about 4 writes each, plus the first and the switch's.
                #expect(perViewer <= 8, "\(s)")
            } else {
                #expect(perViewer >= 10, "on the 250 ms beat: about 16 writes each; \(s)")
            }
            #expect(await eventually { running.relay.statistics.largeAudiencePlaybacks == 0 },
                    "ended with its playback")
            await running.stop()
        }

        @Test("a viewer that never reads: the others get every chunk on time; it skips to keyframes, then is closed",
              arguments: PollerKind.allCases)
        func stuckViewer(poller: PollerKind) async throws {
            // 8 Mbit/s for 5 s: more than the kernel's socket buffers hold for the viewer that does not read.
            let movie = try TestMedia.movie(seconds: 5, video: "mpeg2video", size: "640x480", bitrate: "8M")
            let file = try TestMedia.bytes(movie)
            let running = try await RunningRelay(poller: poller, movies: ["movie": movie]) {
                $0.ring = .init(capacityBytes: 2 << 20, maxLag: .milliseconds(500), stuckTimeout: .seconds(2))
            }
            let stuck = try HTTPViewer(port: running.httpPort, receiveBuffer: 4096)
            try stuck.request("/live/movie.ts")
            let good = try await HTTPViewer.get("/live/movie.ts", port: running.httpPort)
            #expect(good.status == 200 && good.ended)
            #expect(Array(good.body.suffix(file.count)) == file, "the reading viewer lost bytes")
            let spread = good.lastByte - good.firstByte
            // Written a 250 ms beat ahead: the last chunk may arrive up to a beat early.
            #expect(spread >= 4.96 * 0.95 - 0.25 && spread <= 4.96 * 1.05 + 0.3 * testTimeScale, "\(spread) s")
            #expect(await eventually { running.relay.statistics.stuckClosed == 1 })
            let s = running.relay.statistics
            #expect(s.drops >= 1, "\(s)")
            #expect(await eventually { running.relay.statistics.viewers == 0 })
            stuck.socket.close()
            await running.stop()
        }

        @Test("a late joiner starts at a keyframe after the program tables, and ffmpeg decodes it without an error",
              arguments: PollerKind.allCases)
        func lateJoinerStartsAtAKeyframe(poller: PollerKind) async throws {
            let movie = try TestMedia.movie(seconds: 4)
            let running = try await RunningRelay(poller: poller, movies: ["movie": movie])
            async let first = HTTPViewer.get("/live/movie.ts", port: running.httpPort)
            try await Task.sleep(for: .milliseconds(1500))
            let late = try await HTTPViewer.get("/live/movie.ts", port: running.httpPort)
            let early = try await first
            #expect(late.status == 200 && late.ended && early.ended)
            #expect(late.body.count < early.body.count && !late.body.isEmpty)
            #expect(late.body.count % 188 == 0)
            #expect(packetPIDs(late.body, count: 2) == packetPIDs(early.body, count: 2), "PAT and PMT first")
            let saved = temporaryFile("late", ".ts")
            try Data(late.body).write(to: saved)
            let decoded = await runTool("ffmpeg", ["-v", "error", "-i", saved.path, "-f", "null", "-"])
            #expect(decoded.status == 0 && decoded.errors.isEmpty, "\(decoded.errors)")
            await running.stop()
        }
    }

    @Suite("Media relay: edges")
    struct RelayEdgeTests {
        @Test("two edges on one origin, 20 viewers each: the origin reads the file once and serves two connections",
              arguments: PollerKind.allCases)
        func edgesPullOnce(poller: PollerKind) async throws {
            let movie = try TestMedia.movie(seconds: 3)
            let size = try TestMedia.bytes(movie).count
            let origin = try await RunningRelay(poller: poller, movies: ["movie": movie])
            var edges: [RunningRelay] = []
            for _ in 0..<2 {
                edges.append(try await RunningRelay(poller: poller, movies: [:]) {
                    $0.origin = "127.0.0.1:\(origin.framePort)"
                })
            }
            let responses = try await withThrowingTaskGroup(of: HTTPViewer.Response.self) { group in
                for edge in edges {
                    for _ in 0..<20 {
                        group.addTask { try await HTTPViewer.get("/live/movie.ts", port: edge.httpPort) }
                    }
                }
                return try await group.reduce(into: []) { $0.append($1) }
            }
            #expect(responses.count == 40)
            #expect(responses.allSatisfy { $0.status == 200 && $0.ended && $0.body.count > size / 2 })
            let o = origin.relay.statistics
            #expect(o.viewersServed == 2 && o.playbacksStarted == 1 && o.fileBytesRead == size, "\(o)")
            for edge in edges {
                #expect(edge.relay.statistics.viewersServed == 20 && edge.relay.statistics.fileBytesRead == 0)
            }
            // A name the origin does not have either: 404 from the edge.
            let missing = try await HTTPViewer.get("/live/nothere.ts", port: edges[0].httpPort)
            #expect(missing.status == 404)
            for edge in edges { await edge.stop() }
            await origin.stop()
        }
    }

    @Suite("Media relay: the frame protocol")
    struct RelayFrameTests {
        @Test("on demand from 2 s: chunks in order from a keyframe near 2 s, then the end of the stream",
              arguments: PollerKind.allCases)
        func vodFromAStart(poller: PollerKind) async throws {
            let movie = try TestMedia.movie(seconds: 4)
            let running = try await RunningRelay(poller: poller, movies: ["movie": movie])
            let client = try await AsyncFrameClient.connect(port: Int(running.framePort), loop: running.group.next())
            var subscribe = Switchyard_Media_Subscribe()
            subscribe.resource = "movie"
            subscribe.mode = .vod
            subscribe.startMs = 2000
            try await client.send(subscribe, id: MediaMessageID.subscribe)
            var chunks: [Switchyard_Media_Chunk] = []
            var end: Switchyard_Media_EndOfStream?
            for try await frame in client.frames {
                if frame.messageID == MediaMessageID.chunk.rawValue {
                    chunks.append(try frame.decode(as: Switchyard_Media_Chunk.self))
                } else if frame.messageID == MediaMessageID.endOfStream.rawValue {
                    end = try frame.decode(as: Switchyard_Media_EndOfStream.self)
                    break
                }
            }
            #expect(end?.chunks == UInt64(chunks.count))
            #expect(chunks.first?.keyframe == true)
            #expect(zip(chunks.dropFirst(), chunks).allSatisfy { $0.sequence == $1.sequence + 1 })
            // The keyframe at or before 2 s (one every second): 2 s of the 4 s movie are left, 50 chunks.
            #expect((49...51).contains(chunks.count), "\(chunks.count) chunks")
            let first = chunks.first.map { Double($0.time90Khz) / 90_000 } ?? 0
            let last = chunks.last.map { Double($0.time90Khz) / 90_000 } ?? 0
            #expect(abs(last - first - 1.96) < 0.05, "\(last - first)")
            await client.close()
            await running.stop()
        }

        @Test("an unknown resource is an Error frame NO_SUCH_RESOURCE; a chunk without a publish is BAD_REQUEST")
        func frameErrors() async throws {
            let running = try await RunningRelay(poller: .epoll, movies: [:])
            for (id, body, expected) in [
                (MediaMessageID.subscribe, try Self.subscribe("nothere").serializedBytes() as [UInt8],
                 Switchyard_Media_ErrorCode.noSuchResource),
                (MediaMessageID.publishChunk, [UInt8](), .badRequest),
                (MediaMessageID.subscribe, try Self.subscribe("bad/name").serializedBytes() as [UInt8], .badRequest),
            ] {
                let client = try await AsyncFrameClient.connect(port: Int(running.framePort),
                                                                loop: running.group.next())
                try await client.send(messageID: id.rawValue, body: body)
                var iterator = client.frames.makeAsyncIterator()
                let frame = try #require(try await iterator.next())
                #expect(frame.messageID == MediaMessageID.error.rawValue)
                #expect(try frame.decode(as: Switchyard_Media_Error.self).code == expected)
                #expect(try await iterator.next() == nil, "closed after the error")
                await client.close()
            }
            #expect(running.relay.statistics.viewers == 0)
            await running.stop()
        }

        static func subscribe(_ name: String) -> Switchyard_Media_Subscribe {
            var s = Switchyard_Media_Subscribe()
            s.resource = name
            return s
        }

        @Test("the end of the stream reaches every viewer, HTTP and frames", arguments: PollerKind.allCases)
        func endReachesEveryone(poller: PollerKind) async throws {
            let movie = try TestMedia.movie(seconds: 2)
            let running = try await RunningRelay(poller: poller, movies: ["movie": movie], threads: 2)
            async let http = withThrowingTaskGroup(of: HTTPViewer.Response.self) { group in
                for _ in 0..<3 { group.addTask { try await HTTPViewer.get("/live/movie.ts", port: running.httpPort) } }
                return try await group.reduce(into: []) { $0.append($1) }
            }
            let ends = try await withThrowingTaskGroup(of: Int.self) { group in
                for _ in 0..<2 {
                    group.addTask {
                        let client = try await AsyncFrameClient.connect(port: Int(running.framePort),
                                                                        loop: running.group.next())
                        try await client.send(Self.subscribe("movie"), id: MediaMessageID.subscribe)
                        var ends = 0
                        for try await frame in client.frames
                            where frame.messageID == MediaMessageID.endOfStream.rawValue { ends += 1 }
                        await client.close()
                        return ends
                    }
                }
                return try await group.reduce(0, +)
            }
            let responses = try await http
            #expect(responses.count == 3 && responses.allSatisfy { $0.status == 200 && $0.ended })
            #expect(ends == 2)
            await running.stop()
        }
    }
}
