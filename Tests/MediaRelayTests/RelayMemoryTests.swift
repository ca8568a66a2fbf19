import Foundation
@testable import MediaRelay
import Reactor
import Synchronization
import Testing
import TestSupport

#if canImport(Glibc)
import Glibc
#endif

/// A viewer that reads to the end on a thread of its own and counts what it got, so a test can wait for a point of
/// the stream (bytes, not time).
final class CountingViewer: Sendable {
    let viewer: HTTPViewer
    let received = Atomic<Int>(0)
    private let done = Mutex<Result<HTTPViewer.Response, any Error>?>(nil)

    init(port: UInt16, target: String) throws {
        viewer = try HTTPViewer(port: port)
        try viewer.request(target)
        Thread { [self] in
            let result = Result { try viewer.read(progress: { received.store($0, ordering: .relaxed) }) }
            done.withLock { $0 = result }
        }.start()
    }

    /// The whole response, once the stream has ended.
    func response() async throws -> HTTPViewer.Response {
        _ = await eventually(timeout: .seconds(120)) { done.withLock { $0 != nil } }
        guard let result = done.withLock({ $0 }) else { throw TestFailure("the viewer never finished") }
        return try result.get()
    }
}

/// The kB value of a line of /proc/PID/status ("VmRSS", "VmHWM"), in bytes.
func procStatusBytes(pid: Int32, _ field: String) -> Int? {
    guard let text = try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8) else { return nil }
    for line in text.split(separator: "\n") where line.hasPrefix(field + ":") {
        let kb = line.split(separator: " ", omittingEmptySubsequences: true).dropFirst().first.flatMap { Int($0) }
        return kb.map { $0 << 10 }
    }
    return nil
}

extension RelaySocketTests {
    @Suite("Media relay: memory with stuck viewers")
    struct RelayMemoryTests {
        /// Every poller with the shared memory file (sendfile), and epoll without it (writev from the arrays).
        static let outputs: [(PollerKind, Bool)] = PollerKind.allCases.map { ($0, true) } + [(.epoll, false)]

        @Test("stuck viewers copy at most the queue bound each; the reading viewer gets every byte on time",
              arguments: outputs)
        func stuckViewersQueueBound(poller: PollerKind, sendFile: Bool) async throws {
            // One keyframe at the start of 5 s of 8 Mbit/s: a viewer joining late gets everything since it (megabytes)
            // as its first batch, which its socket cannot take.
            let movie = try TestMedia.movie(seconds: 5, gop: 250, video: "mpeg2video", size: "640x480", bitrate: "8M")
            let file = try TestMedia.bytes(movie)
            let bound = 64 << 10
            let running = try await RunningRelay(poller: poller, movies: ["movie": movie]) {
                $0.ring = .init(capacityBytes: 16 << 20, maxLag: .seconds(4), stuckTimeout: .seconds(30))
                $0.maxViewerQueueBytes = bound
                $0.sendFile = sendFile
            }
            let good = try CountingViewer(port: running.httpPort, target: "/live/movie.ts")
            #expect(await eventually { good.received.load(ordering: .relaxed) > 2 << 20 })
            var stuck: [HTTPViewer] = []
            for _ in 0..<8 {
                let viewer = try HTTPViewer(port: running.httpPort, receiveBuffer: 4096)
                try viewer.request("/live/movie.ts")
                stuck.append(viewer)
            }
            let response = try await good.response()
            #expect(response.status == 200 && response.ended)
            #expect(Array(response.body.suffix(file.count)) == file, "the reading viewer lost bytes")
            let spread = response.lastByte - response.firstByte
            #expect(spread >= 4.96 * 0.95 - 0.25 && spread <= 4.96 * 1.05 + 0.3 * testTimeScale, "\(spread) s")
            let s = running.relay.statistics
            #expect(s.viewersServed == 9, "\(s)")
            // Each stuck viewer was handed megabytes and took a few kilobytes: what was copied for it stayed within
            // the bound (a response head or end of stream aside); the rest stayed in the shared chunks. From the
            // shared memory file nothing is copied at all: only framing (a size line, program tables) is queued.
            if sendFile {
                #expect(s.peakViewerQueuedBytes <= 1024 && s.sharedBytesSent >= file.count, "\(s)")
            } else {
                #expect(s.peakViewerQueuedBytes > 0 && s.peakViewerQueuedBytes <= bound + 1024, "\(s)")
                #expect(s.sharedBytesSent == 0 && s.sharedMemoryBytes == 0, "\(s)")
            }
            for viewer in stuck { viewer.socket.close() }
            #expect(await eventually { running.relay.statistics.viewers == 0 })
            // The playback ended and its viewers left: its shared memory file let go of everything.
            #expect(await eventually { running.relay.statistics.sharedMemoryBytes == 0 },
                    "\(running.relay.statistics)")
            await running.stop()
        }

        @Test("a relay process with 40 stuck viewers: its peak RSS grows less than ring + 40 x queue bound + 16 MiB")
        func stuckViewersRSS() async throws {
            let exe = switchyardExecutable()
            try #require(FileManager.default.isExecutableFile(atPath: exe), "build switchyard before the tests")
            // As above: one keyframe, so a stuck viewer's first batch is everything since the start: 9 MB, more than
            // the kernel's socket buffer takes (tcp_wmem's 4 MiB at most), so megabytes of it stay with the relay.
            let movie = try TestMedia.movie(seconds: 12, gop: 300, video: "mpeg2video", size: "640x480", bitrate: "8M")
            let file = try TestMedia.bytes(movie)
            let db = temporarySQLiteURL("relay-rss")
            let added = try runSwitchyard(["resource", "add", "--name", "movie", "--path", movie.path, "--db", db])
            try #require(added.status == 0, "\(added.stderr)")
            let ringKiB = 16 << 10
            let queueKiB = 64
            let stuckCount = 40
            let relay = try RelayProcess(arguments: [
                "relay", "--port", "0", "--http-port", "0", "--db", db, "--ring-kib", "\(ringKiB)", "--max-lag", "5",
                "--stuck-timeout", "30", "--viewer-queue-kib", "\(queueKiB)",
            ])
            defer { relay.stop() }
            let httpPort = try #require(await relay.httpPort())
            let baseline = try #require(procStatusBytes(pid: relay.pid, "VmRSS"))

            let good = try CountingViewer(port: httpPort, target: "/live/movie.ts")
            #expect(await eventually(timeout: .seconds(30)) { good.received.load(ordering: .relaxed) > 9 << 20 })
            var stuck: [HTTPViewer] = []
            for _ in 0..<stuckCount {
                let viewer = try HTTPViewer(port: httpPort, receiveBuffer: 4096)
                try viewer.request("/live/movie.ts")
                stuck.append(viewer)
            }
            let response = try await good.response()
            #expect(response.status == 200 && response.ended)
            #expect(Array(response.body.suffix(file.count)) == file, "the reading viewer lost bytes")
            let spread = response.lastByte - response.firstByte
            #expect(spread >= 11.96 * 0.95 - 0.25 && spread <= 11.96 * 1.05 + 0.3 * testTimeScale, "\(spread) s")
            let peak = try #require(procStatusBytes(pid: relay.pid, "VmHWM"))
            let growth = peak - baseline
            let bound = (ringKiB << 10) + stuckCount * (queueKiB << 10) + (16 << 20)
            let summary = "peak RSS \(peak >> 10) KiB, \(growth >> 10) KiB above the idle relay, bound \(bound >> 10)"
            #expect(growth <= bound, "\(summary) (\(stuckCount) stuck viewers x 5 MB would be \(stuckCount * 5) MB)")
            for viewer in stuck { viewer.socket.close() }
            relay.stop()
            #expect(await eventually { relay.log.contains("relay totals") })
            // Every viewer was served (none refused, none closed: they held their batches to the end).
            let totals = relay.log.split(separator: "\n").first { $0.contains("relay totals") }.map(String.init) ?? ""
            #expect(totals.contains("viewers.served=\(stuckCount + 1)") && totals.contains("stuck_closed=0"),
                    "\(totals)")
        }
    }
}

/// `switchyard relay ...` as a child process; its HTTP port read from the line it prints when it listens.
final class RelayProcess: Sendable {
    private let process: Process
    private let output = Mutex<String>("")
    private let errors = Mutex<String>("")
    var pid: Int32 { process.processIdentifier }

    init(arguments: [String]) throws {
        process = Process()
        process.executableURL = URL(fileURLWithPath: switchyardExecutable())
        process.arguments = arguments
        let out = Pipe()
        let err = Pipe()
        process.standardOutput = out
        process.standardError = err
        process.standardInput = FileHandle.nullDevice
        try process.run()
        let reader = out.fileHandleForReading
        Thread { [self] in
            while true {
                let data = reader.availableData
                if data.isEmpty { break }
                output.withLock { $0 += String(decoding: data, as: UTF8.self) }
            }
        }.start()
        let errorReader = err.fileHandleForReading
        Thread { [self] in
            while true {
                let data = errorReader.availableData
                if data.isEmpty { break }
                errors.withLock { $0 += String(decoding: data, as: UTF8.self) }
            }
        }.start()
    }

    /// What it logged so far (stderr).
    var log: String { errors.withLock { $0 } }

    /// The port after "http 127.0.0.1:" in the listening line, once printed.
    func httpPort() async -> UInt16? {
        var port: UInt16?
        _ = await eventually(timeout: .seconds(30)) {
            let text = output.withLock { $0 }
            guard let range = text.range(of: "http 127.0.0.1:") else { return false }
            port = UInt16(text[range.upperBound...].prefix { $0.isNumber })
            return true
        }
        return port
    }

    func stop() {
        if process.isRunning {
            process.interrupt()
            process.waitUntilExit()
        }
    }
}
