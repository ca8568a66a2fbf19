import Foundation
import LarsWire
@testable import MediaRelay
import Messaging
import Reactor
import Storage
import SwiftProtobuf
import Testing
import TestSupport

/// Sends raw request bytes and reads the relay's whole answer (status line and body).
private func exchange(_ bytes: [UInt8], port: UInt16) async throws -> (status: Int, text: String) {
    let socket = try BlockingSocket(port: port, receiveTimeout: 20)
    let answer = try await onThread { () -> Result<[UInt8], any Error> in
        Result {
            try socket.sendAll(bytes)
            return try socket.receiveUntilClose()
        }
    }.mapError { TestFailure("no answer to a request of \(bytes.count) bytes: \($0)") }.get()
    socket.close()
    let text = String(decoding: answer, as: UTF8.self)
    let status = text.split(separator: " ", maxSplits: 2).dropFirst().first.flatMap { Int($0) } ?? 0
    return (status, text)
}

extension RelaySocketTests {
    @Suite("Media relay: bad input, publishing, capacity")
    struct RelayInputTests {
        @Test("bad requests get their status and a reason, then the close; the relay goes on serving",
              arguments: PollerKind.allCases)
        func badRequests(poller: PollerKind) async throws {
            let movie = try TestMedia.movie(seconds: 1)
            let notTS = temporaryFile("not-ts", ".ts")
            try Data(repeating: 0x41, count: 200_000).write(to: notTS)
            let running = try await RunningRelay(poller: poller, movies: ["movie": movie, "text": notTS]) {
                // 2 s: a request is connected on the task and sent from a thread of its own, which a loaded machine
                // may start late.
                $0.requestHeadTimeout = .seconds(2)
            }
            let port = running.httpPort
            let cases: [(String, [UInt8], Int, String)] = [
                ("garbage", Array("\u{1}\u{2}garbage\r\n\r\n".utf8), 400, "request line"),
                ("a head over 8 KiB", Array("GET /live/movie.ts HTTP/1.1\r\nX: \(String(repeating: "a", count: 9000))"
                                           .utf8), 431, "Too Large"),
                ("an unknown resource", Array("GET /live/nothere.ts HTTP/1.1\r\n\r\n".utf8), 404, "nothere"),
                ("another path", Array("GET /index.html HTTP/1.1\r\n\r\n".utf8), 404, "no such path"),
                ("a method", Array("DELETE /live/movie.ts HTTP/1.1\r\n\r\n".utf8), 405, "Allow: GET"),
                ("a start", Array("GET /vod/movie.ts?start=soon HTTP/1.1\r\n\r\n".utf8), 400, "start"),
                ("a version", Array("GET /live/movie.ts HTTP/2.0\r\n\r\n".utf8), 505, "Version"),
                ("a file that is not TS", Array("GET /live/text.ts HTTP/1.1\r\n\r\n".utf8), 500, "cannot be relayed"),
                ("a publish without framing", Array("POST /publish/cam.ts HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n"
                                                     .utf8), 400, "framing"),
            ]
            for (what, request, status, reason) in cases {
                let answer = try await exchange(request, port: port)
                #expect(answer.status == status, "\(what): \(answer.text)")
                #expect(answer.text.contains(reason), "\(what): \(answer.text)")
            }
            // Silence: closed after the head timeout, without an answer.
            let silent = try BlockingSocket(port: port, receiveTimeout: 10)
            let start = ContinuousClock.now
            #expect(try await onThread { Result { try silent.receiveUntilClose() } }.get().isEmpty)
            #expect(ContinuousClock.now - start >= .milliseconds(1600))
            silent.close()
            // Still serving, and no slot is held by any of the above.
            let good = try await HTTPViewer.get("/vod/movie.ts", port: port)
            #expect(good.status == 200 && good.ended && !good.body.isEmpty)
            #expect(await eventually { running.relay.statistics.viewers == 0 })
            #expect(running.relay.statistics.badRequests >= 5 && running.relay.statistics.notFound >= 2)
            await running.stop()
        }

        @Test("a stream published with `switchyard publish` is watched live by ffmpeg without a message",
              arguments: PollerKind.allCases)
        func publishedOverFrames(poller: PollerKind) async throws {
            let movie = try TestMedia.movie(seconds: 3)
            let running = try await RunningRelay(poller: poller, movies: [:])
            let relayAddress = "127.0.0.1:\(running.framePort)"
            async let published = runTool(switchyardExecutable(), ["publish", "cam", movie.path,
                                                                   "--relay", relayAddress])
            #expect(await eventually { running.relay.statistics.publishers == 1 })
            let watched = await runTool("ffmpeg", ["-v", "error", "-i", "\(running.httpBase)/live/cam.ts",
                                                   "-f", "null", "-"])
            #expect(watched.status == 0 && watched.errors.isEmpty, "\(watched.errors)")
            let publisher = await published
            #expect(publisher.status == 0 && publisher.output.hasPrefix("published cam: "), "\(publisher.errors)")
            // A second publisher of the name while the first one sends: refused.
            async let first = runTool(switchyardExecutable(), ["publish", "cam2", movie.path, "--relay", relayAddress])
            #expect(await eventually { running.relay.statistics.publishers == 1 })
            let second = await runTool(switchyardExecutable(), ["publish", "cam2", movie.path, "--relay", relayAddress])
            #expect(second.status == 1 && second.errors.contains("somebody publishes cam2 already"), "\(second.errors)")
            #expect(await first.status == 0)
            await running.stop()
        }

        @Test("HTTP publishing: a chunked POST is relayed; garbage is 415; a stalled publisher's viewers get the end",
              arguments: PollerKind.allCases)
        func publishedOverHTTP(poller: PollerKind) async throws {
            let movie = try TestMedia.bytes(try TestMedia.movie(seconds: 2))
            let running = try await RunningRelay(poller: poller, movies: [:]) {
                // Long enough for the waits below on a loaded machine; the stalled publisher waits for it once.
                $0.publisherIdleTimeout = .seconds(3)
            }
            let port = running.httpPort
            // Chunked, in pieces of 10,000 bytes, as ffmpeg's HTTP output sends it; a viewer joins first.
            let publisher = try BlockingSocket(port: port, receiveTimeout: 20)
            try publisher.sendAll(Array("POST /publish/cam.ts HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n".utf8))
            #expect(await eventually { running.relay.statistics.publishers == 1 })
            let viewer = try HTTPViewer(port: port)
            try viewer.request("/live/cam.ts")
            // The head comes once the viewer is attached to the published stream (its slot is counted earlier, while
            // the lookup runs: a publication that ended before it would leave it no stream to find).
            try await onThread { Result { try viewer.readHead() } }.get()
            #expect(running.relay.statistics.viewers == 1)
            async let watched = onThread { Result { try viewer.read() } }
            // The blocking sends and the wait for the answer run on a thread of their own: on the test's task they
            // would hold one of the few threads of Swift's cooperative pool, which the suites beside this one (and
            // the relay's lookups) need.
            let published = await onThread { () -> Result<[UInt8], any Error> in
                Result {
                    for start in stride(from: 0, to: movie.count, by: 10_000) {
                        let piece = movie[start..<min(movie.count, start + 10_000)]
                        try publisher.sendAll(Array((String(piece.count, radix: 16) + "\r\n").utf8) + piece + [13, 10])
                    }
                    try publisher.sendAll(Array("0\r\n\r\n".utf8))
                    return try publisher.receiveUntilClose()
                }
            }
            let answer = String(decoding: try published.mapError { TestFailure("the publisher's answer: \($0)") }.get(),
                                as: UTF8.self)
            #expect(answer.hasPrefix("HTTP/1.1 200 OK") && answer.contains("published \(movie.count) bytes"))
            let response = try await watched.get()
            #expect(response.status == 200 && response.ended, "status \(response.status), \(response.body.count) bytes")
            // From the first keyframe on, the published stream's packets (the last chunk when the publisher ends).
            #expect(response.body.count >= movie.count * 9 / 10 && response.body.count % 188 == 0)

            // Not a transport stream: refused once a megabyte has shown no frame with a clock.
            let garbage = [UInt8](repeating: 0x47, count: 1_200_000)
            let refused = try await exchange(Array("POST /publish/junk.ts HTTP/1.1\r\nContent-Length: \(garbage.count)"
                                                   .utf8) + [13, 10, 13, 10] + garbage, port: port)
            #expect(refused.status == 415, "\(refused.text)")

            // Stalled after 100 KB: closed after the idle timeout; its viewer's stream ends. (The publishers before
            // it have left first, so the count below is the staller's.)
            #expect(await eventually { running.relay.statistics.publishers == 0 })
            let staller = try BlockingSocket(port: port, receiveTimeout: 20)
            try staller.sendAll(Array("PUT /publish/slow.ts HTTP/1.1\r\nContent-Length: 100000000\r\n\r\n".utf8))
            try staller.sendAll(Array(movie.prefix(100_000)))
            #expect(await eventually { running.relay.statistics.publishers == 1 })
            let stalledViewer = try await HTTPViewer.get("/live/slow.ts", port: port)
            #expect(stalledViewer.status == 200 && stalledViewer.ended)
            #expect(await eventually { running.relay.statistics.publishers == 0 })
            staller.close()
            publisher.close()
            await running.stop()
        }

        @Test("a full relay answers 503 (and FULL over frames); a slot freed is taken again")
        func capacity() async throws {
            let movie = try TestMedia.movie(seconds: 3)
            let running = try await RunningRelay(poller: .epoll, movies: ["movie": movie]) { $0.capacity = 2 }
            let a = try HTTPViewer(port: running.httpPort)
            let b = try HTTPViewer(port: running.httpPort)
            try a.request("/live/movie.ts")
            try b.request("/live/movie.ts")
            #expect(await eventually { running.relay.statistics.viewers == 2 })
            let third = try await exchange(Array("GET /live/movie.ts HTTP/1.1\r\n\r\n".utf8), port: running.httpPort)
            #expect(third.status == 503 && third.text.contains("full"))
            let client = try await AsyncFrameClient.connect(port: Int(running.framePort), loop: running.group.next())
            var subscribe = Switchyard_Media_Subscribe()
            subscribe.resource = "movie"
            try await client.send(subscribe, id: MediaMessageID.subscribe)
            var frames = client.frames.makeAsyncIterator()
            let refusal = try #require(try await frames.next())
            #expect(try refusal.decode(as: Switchyard_Media_Error.self).code == .full)
            await client.close()
            a.socket.close()
            #expect(await eventually { running.relay.statistics.viewers == 1 })
            let again = try await HTTPViewer.get("/live/movie.ts", port: running.httpPort)
            #expect(again.status == 200)
            #expect(running.relay.statistics.viewersRefused == 2)
            b.socket.close()
            await running.stop()
        }
    }
}

@Suite("switchyard relay, watch, publish: bad input exits 1 with one line")
struct RelayCLITests {
    @Test("settings out of range, a port taken, a relay that is not there, a file that is not there")
    func failures() throws {
        let listener = try boundLoopbackSocket(listenBacklog: 1)
        defer { close(listener.fd) }
        let db = temporarySQLiteURL("relay-cli")
        let cases: [([String], String)] = [
            (["relay", "--capacity", "0", "--db", db], "capacity must be at least 1"),
            (["relay", "--write-interval-ms", "5000", "--db", db], "writeInterval must be 0...1 s"),
            (["relay", "--origin", "nowhere", "--db", db], "origin must be HOST:PORT"),
            (["relay", "--port", "\(listener.port)", "--http-port", "0", "--db", db], "relay: cannot listen on"),
            (["watch", "movie", "--relay", "127.0.0.1:1"], "watch: cannot connect to 127.0.0.1:1"),
            (["watch", "bad/name"], "bad resource name"),
            (["publish", "cam", "/nonexistent.ts", "--relay", "127.0.0.1:1"], "publish: cannot read /nonexistent.ts"),
        ]
        for (arguments, message) in cases {
            let result = try runSwitchyard(arguments)
            #expect(result.status != 0, "\(arguments)")
            let lines = result.stderr.split(separator: "\n").filter { $0.hasPrefix("Error:") }
            #expect(lines.count == 1 && lines.first?.contains(message) == true,
                    "\(arguments): \(result.stderr)")
        }
    }
}
