import Foundation
import Logging
@testable import MediaRelay
import Reactor
import Storage
import Synchronization
import Testing
import TestSupport

#if canImport(Glibc)
import Glibc
#endif

/// Every relay socket suite nests here, so they run one at a time (each paces movies in real time, and the players
/// they start share the machine's few cores).
@Suite("Media relay over real sockets", .serialized)
enum RelaySocketTests {}

/// A relay on a fresh group (the poller under test) and SQLite catalog, ports 0, with the given movies added.
final class RunningRelay: Sendable {
    let group: EventLoopGroup
    let relay: MediaRelayServer
    let pool: ConnectionPool
    let httpPort: UInt16
    let framePort: UInt16

    init(poller: PollerKind, movies: [String: URL], threads: Int = 1,
         configure: (inout RelayConfiguration) -> Void = { _ in }) async throws {
        pool = try ConnectionPool(url: temporarySQLiteURL("relay"), configuration: PoolConfiguration(minConnections: 0),
                                  logger: relayTestLogger)
        try await ResourceCatalog.create(on: pool)
        for (name, url) in movies {
            try await ResourceCatalog.add(name: name, path: url.path, durationMilliseconds: 0, added: 0, on: pool)
        }
        group = try EventLoopGroup(ioLoops: threads, configuration: LoopConfiguration(poller: poller))
        var configuration = RelayConfiguration(framePort: 0, httpPort: 0)
        configure(&configuration)
        relay = MediaRelayServer(group: group, configuration: configuration, pool: pool, logger: relayTestLogger)
        let addresses = try relay.start()
        httpPort = addresses.http!.port
        framePort = addresses.frames!.port
    }

    var httpBase: String { "http://127.0.0.1:\(httpPort)" }

    func stop() async {
        await onThread { [relay, group] in
            relay.shutdown()
            group.shutdown()
        }
        await pool.close()
    }
}

let relayTestLogger: Logger = {
    var logger = Logger(label: "relay-tests")
    logger.logLevel = .warning
    return logger
}()

/// Runs blocking work on a thread of its own (never on the cooperative pool the relay's lookups need).
func onThread<T: Sendable>(_ body: @escaping @Sendable () -> T) async -> T {
    await withCheckedContinuation { continuation in
        Thread { continuation.resume(returning: body()) }.start()
    }
}

/// An HTTP viewer on a plain blocking socket: sends the request, reads the response to its end, and notes when each
/// piece of the body arrived (to check pacing). `receiveBuffer`: a small kernel buffer for a viewer that never reads.
final class HTTPViewer: @unchecked Sendable {  // one thread at a time: the test starts it, then waits for it
    let socket: BlockingSocket
    /// Bytes `readHead()` read (the response head and what came with it): `read()` starts from them.
    private var early: [UInt8] = []

    struct Response: Sendable {
        var status: Int
        var headers: [String: String]
        /// The body with the chunked framing removed.
        var body: [UInt8]
        /// Seconds from the request to the first and the last byte of the body.
        var firstByte: Double
        var lastByte: Double
        /// The body ended properly (a chunked body's last chunk, or the close of an unframed one).
        var ended: Bool
    }

    init(port: UInt16, receiveBuffer: Int32? = nil) throws {
        socket = try BlockingSocket(port: port, receiveTimeout: 30)
        if var size = receiveBuffer {
            setsockopt(socket.fd, SOL_SOCKET, SO_RCVBUF, &size, socklen_t(MemoryLayout<Int32>.size))
        }
    }

    func request(_ target: String, method: String = "GET", version: String = "HTTP/1.1") throws {
        try socket.sendAll(Array("\(method) \(target) \(version)\r\nHost: test\r\n\r\n".utf8))
    }

    /// Waits for the response head (the relay has attached the viewer once it sent it); `read()` goes on from there.
    func readHead() throws {
        var buffer = [UInt8](repeating: 0, count: 4096)
        while early.firstRange(of: [13, 10, 13, 10]) == nil {
            let n = buffer.withUnsafeMutableBytes { recv(socket.fd, $0.baseAddress, $0.count, 0) }
            guard n > 0 else { throw TestFailure("no response head in \(early.count) bytes (errno \(errno))") }
            early += buffer[0..<n]
        }
    }

    /// Reads the whole response (the relay closes after it); `progress` gets the bytes read so far after each read.
    func read(progress: (Int) -> Void = { _ in }) throws -> Response {
        let start = ContinuousClock.now
        var raw: [UInt8] = early
        early = []
        var firstBodyAt: Double?
        var lastAt = 0.0
        var headEnd: Int?
        var buffer = [UInt8](repeating: 0, count: 64 << 10)
        while true {
            let n = buffer.withUnsafeMutableBytes { recv(socket.fd, $0.baseAddress, $0.count, 0) }
            if n <= 0 { break }
            raw += buffer[0..<n]
            progress(raw.count)
            let now = (ContinuousClock.now - start).seconds
            if headEnd == nil, let end = raw.firstRange(of: [13, 10, 13, 10])?.upperBound { headEnd = end }
            if let headEnd, raw.count > headEnd {
                if firstBodyAt == nil { firstBodyAt = now }
                lastAt = now
            }
        }
        guard let headEnd else { throw TestFailure("no response head in \(raw.count) bytes") }
        let headText = String(decoding: raw[0..<headEnd], as: UTF8.self)
        let lines = headText.components(separatedBy: "\r\n")
        let status = Int(lines[0].split(separator: " ")[1]) ?? 0
        var headers: [String: String] = [:]
        for line in lines.dropFirst() where line.contains(":") {
            let parts = line.split(separator: ":", maxSplits: 1)
            headers[parts[0].lowercased()] = parts[1].trimmingCharacters(in: .whitespaces)
        }
        var body = Array(raw[headEnd...])
        var ended = true
        if headers["transfer-encoding"] == "chunked" {
            var decoder = HTTPBodyDecoder(framing: .chunked)
            body = try decoder.feed(body)
            ended = decoder.isComplete
        }
        return Response(status: status, headers: headers, body: body, firstByte: firstBodyAt ?? 0, lastByte: lastAt,
                        ended: ended)
    }

    /// Requests and reads in a thread of its own.
    static func get(_ target: String, port: UInt16) async throws -> Response {
        let viewer = try HTTPViewer(port: port)
        return try await onThread { () -> Result<Response, any Error> in
            Result {
                try viewer.request(target)
                return try viewer.read()
            }
        }.get()
    }
}

extension Duration {
    var seconds: Double { Double(components.seconds) + Double(components.attoseconds) / 1e18 }
}

/// Runs a tool and returns its exit status and standard error (ffmpeg, ffprobe: the real players).
func runTool(_ tool: String, _ arguments: [String]) async -> (status: Int32, output: String, errors: String) {
    await onThread {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        process.arguments = [tool] + arguments
        let errors = Pipe()
        let output = Pipe()
        process.standardError = errors
        process.standardOutput = output
        do { try process.run() } catch { return (-1, "", "cannot start \(tool): \(error)") }
        let outText = String(decoding: output.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        let errText = String(decoding: errors.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        process.waitUntilExit()
        return (process.terminationStatus, outText, errText)
    }
}

/// The PIDs of the first `count` TS packets of `bytes`.
func packetPIDs(_ bytes: [UInt8], count: Int) -> [Int] {
    stride(from: 0, to: min(bytes.count, count * 188), by: 188).map { i in
        (Int(bytes[i + 1] & 0x1F) << 8) | Int(bytes[i + 2])
    }
}
