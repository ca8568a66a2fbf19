import Foundation
import LarsProtocol
import LoadBalancing
import Logging
import Messaging
import NameService
import Reactor
import RouteTestSupport
import RouteStore
import Storage
import Synchronization
import Testing
import TestSupport

/// Every socket suite of this target nests here, so they run one at a time (the name service's polling task,
/// the pools' threads and the child processes share the machine's few cores).
@Suite("Name service over real sockets", .serialized)
enum NameServiceSocketTests {}

/// Records log messages at info and above (for "logged once" checks).
final class LogRecorder: Sendable {
    let lines = Shared<[CapturedLog]>([])

    var logger: Logger { CapturingLogHandler.logger(into: lines, level: .info) }

    func count(containing text: String) -> Int {
        lines.get().filter { $0.message.contains(text) }.count
    }
}

/// The next frame of a client, or nil when none arrives within `timeout`.
func nextFrame(_ client: AsyncFrameClient, timeout: Duration = .seconds(5)) async throws -> InboundFrame? {
    try await withThrowingTaskGroup(of: InboundFrame?.self) { group in
        group.addTask {
            var iterator = client.frames.makeAsyncIterator()
            return try await iterator.next()
        }
        group.addTask {
            try await Task.sleep(for: timeout)
            return nil
        }
        let first = try await group.next() ?? nil
        group.cancelAll()
        return first
    }
}

/// Frames until one satisfies `match` (others are skipped), or nil after `timeout`.
func nextFrame(_ client: AsyncFrameClient, timeout: Duration = .seconds(5),
               where match: (InboundFrame) throws -> Bool) async throws -> InboundFrame? {
    let deadline = ContinuousClock.now + timeout
    while ContinuousClock.now < deadline {
        guard let frame = try await nextFrame(client, timeout: deadline - ContinuousClock.now) else { return nil }
        if try match(frame) { return frame }
    }
    return nil
}

/// The hosts of a GetRouteResponse frame.
func routeHosts(_ frame: InboundFrame) throws -> [LoadBalancing.Host] {
    let response = try frame.decode(as: Lars_GetRouteResponse.self)
    return response.host.compactMap { LoadBalancing.Host(wireIP: $0.ip, wirePort: $0.port) }
}

/// A name service on a fresh group and port 0: bound, then run in a task of its own (as a `ServiceGroup` would);
/// `stop()` cancels it (for the name service as good as a graceful shutdown: it has nothing to drain) and stops the
/// group.
final class RunningNameService: Sendable {
    let group: EventLoopGroup
    let service: NameService
    let port: Int
    private let task: Task<Void, any Error>

    init(pool: ConnectionPool, pollInterval: Duration = .milliseconds(100), logger: Logger = quietLogger,
         configure: (inout NameServiceConfiguration) -> Void = { _ in }) async throws {
        group = try EventLoopGroup(ioLoops: 1)
        var configuration = NameServiceConfiguration(port: 0, pollInterval: pollInterval)
        configure(&configuration)
        let service = NameService(group: group, configuration: configuration, pool: pool, logger: logger)
        self.service = service
        port = Int(try service.start().port)
        task = Task { try await service.run() }
    }

    /// A client connected to the service on the group's loop.
    func client() async throws -> AsyncFrameClient {
        try await AsyncFrameClient.connect(port: port, loop: group.next())
    }

    /// Stops the service (its `run()` returns) and the group.
    func stop() async {
        task.cancel()
        if case .failure(let error) = await task.result { Issue.record("run() threw \(error)") }
        await onThread { [group] in group.shutdown() }
    }
}

/// Runs blocking work on its own thread (never on the concurrency pool the services' tasks need).
func onThread<T: Sendable>(_ body: @escaping @Sendable () -> T) async -> T {
    await withCheckedContinuation { continuation in
        let thread = Thread { continuation.resume(returning: body()) }
        thread.start()
    }
}

/// Sends a GetRouteRequest.
func askRoute(_ client: AsyncFrameClient, _ key: RouteKey) async throws {
    var request = Lars_GetRouteRequest()
    request.modid = key.modid
    request.cmdid = key.cmdid
    try await client.send(request, id: MessageID.getRouteRequest)
}

/// What a finished child process printed.
struct ChildOutput: Sendable {
    var status: Int32
    var stdout: String
    var stderr: String
}

/// `switchyard ARGS` as a process with stdout and stderr piped, not started yet.
func switchyardProcess(_ arguments: [String]) throws -> (process: Process, stdout: Pipe, stderr: Pipe) {
    let exe = switchyardExecutable()
    guard FileManager.default.isExecutableFile(atPath: exe) else {
        throw TestFailure("switchyard executable not found at \(exe); run `swift build` before `swift test`")
    }
    let process = Process()
    process.executableURL = URL(fileURLWithPath: exe)
    process.arguments = arguments
    let out = Pipe()
    let err = Pipe()
    process.standardOutput = out
    process.standardError = err
    return (process, out, err)
}

/// Runs `switchyard` with arguments to completion (killed after `timeout`).
func runSwitchyard(_ arguments: [String], timeout: Duration = .seconds(60)) async throws -> ChildOutput {
    let (process, out, err) = try switchyardProcess(arguments)
    let seconds = Double(timeout.components.seconds)
    return await onThread {
        do { try process.run() } catch {
            return ChildOutput(status: -1, stdout: "", stderr: "cannot run: \(error)")
        }
        let killer = DispatchWorkItem { if process.isRunning { process.terminate() } }
        DispatchQueue.global().asyncAfter(deadline: .now() + seconds, execute: killer)
        // Read both pipes to the end before waiting, so a chatty child never blocks on a full pipe.
        let errData = Mutex<Data>(Data())
        let errReader = Thread { errData.withLock { $0 = err.fileHandleForReading.readDataToEndOfFile() } }
        errReader.start()
        let outData = out.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        killer.cancel()
        while errReader.isExecuting || !errReader.isFinished { usleep(1000) }
        return ChildOutput(status: process.terminationStatus, stdout: String(decoding: outData, as: UTF8.self),
                           stderr: String(decoding: errData.withLock { $0 }, as: UTF8.self))
    }
}

/// A `switchyard` service run as a child process: its first stdout line (which names `127.0.0.1:PORT`) is read
/// at start; `terminate` sends SIGTERM and returns the exit status and what it printed on stderr.
final class ChildService: Sendable {
    let firstLine: String
    let port: UInt16
    private let pid: Int32
    private let exit: Task<(status: Int32, stderr: String), Never>

    private init(firstLine: String, port: UInt16, pid: Int32, exit: Task<(status: Int32, stderr: String), Never>) {
        self.firstLine = firstLine
        self.port = port
        self.pid = pid
        self.exit = exit
    }

    /// Starts `switchyard ARGS` and waits (at most 30 s) for its first line.
    static func start(_ arguments: [String]) async throws -> ChildService {
        let (process, out, err) = try switchyardProcess(arguments)
        try process.run()
        let pid = process.processIdentifier
        let killer = DispatchWorkItem { kill(pid, SIGKILL) }
        DispatchQueue.global().asyncAfter(deadline: .now() + 30, execute: killer)
        let line = await onThread { () -> String in
            var line = Data()
            while !line.contains(UInt8(ascii: "\n")) {
                let chunk = out.fileHandleForReading.availableData
                if chunk.isEmpty { break }
                line.append(chunk)
            }
            return String(decoding: line, as: UTF8.self).split(separator: "\n").first.map(String.init) ?? ""
        }
        killer.cancel()
        let exit = Task {
            await onThread { () -> (status: Int32, stderr: String) in
                let data = err.fileHandleForReading.readDataToEndOfFile()
                process.waitUntilExit()
                let status = process.terminationReason == .exit ? process.terminationStatus : 128 + process.terminationStatus
                return (status, String(decoding: data, as: UTF8.self))
            }
        }
        guard let range = line.range(of: #"127\.0\.0\.1:[0-9]+"#, options: .regularExpression),
              let port = UInt16(line[range].split(separator: ":")[1]) else {
            kill(pid, SIGKILL)
            throw TestFailure("the child did not print its address; got: \(line); stderr: \(await exit.value.stderr)")
        }
        return ChildService(firstLine: line, port: port, pid: pid, exit: exit)
    }

    /// SIGTERM, then waits for the exit (SIGKILL after `timeout`: status 137). Returns the status and stderr.
    func terminate(within timeout: Duration) async -> (status: Int32, stderr: String) {
        kill(pid, SIGTERM)
        let pid = self.pid
        let killer = Task {
            try? await Task.sleep(for: timeout)
            if !Task.isCancelled { kill(pid, SIGKILL) }
        }
        let result = await exit.value
        killer.cancel()
        return result
    }
}
