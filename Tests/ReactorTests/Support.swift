import EchoServer
import Foundation
import Reactor
import Testing
import TestSupport

#if canImport(Glibc)
import Glibc
#endif

func randomBytes(_ n: Int) -> [UInt8] {
    var g = SystemRandomNumberGenerator()
    var out = [UInt8](repeating: 0, count: n)
    out.withUnsafeMutableBytes { raw in
        var i = 0
        while i + 8 <= n {
            raw.storeBytes(of: g.next() as UInt64, toByteOffset: i, as: UInt64.self)
            i += 8
        }
        while i < n {
            raw[i] = UInt8.random(in: 0...255, using: &g)
            i += 1
        }
    }
    return out
}

/// An echo server on a fresh group, torn down when `body` returns.
func withEchoServer<R>(
    poller: PollerKind, ioLoops: Int = 2, connection: ConnectionOptions = ConnectionOptions(),
    onConnect: @escaping @Sendable (TCPConnection) -> Void = { _ in },
    onClose: @escaping @Sendable (TCPConnection) -> Void = { _ in },
    _ body: (TCPServer, UInt16) throws -> R
) throws -> R {
    try withGroup(poller: poller, ioLoops: ioLoops) { group in
        let server = TCPServer(
            group: group, configuration: ServerConfiguration(port: 0, connection: connection),
            callbacks: EchoService.callbacks(onConnect: onConnect, onClose: onClose))
        let address = try server.start()
        defer { server.shutdown(timeout: .seconds(2)) }
        return try body(server, address.port)
    }
}

/// CPU time (user + system, in clock ticks) of one thread of this process, from /proc.
func threadCPUTicks(tid: Int32) -> Int {
    cpuTicks(statPath: "/proc/self/task/\(tid)/stat")
}

/// CPU time (user + system, in clock ticks) of a process, from /proc.
func processCPUTicks(pid: Int32) -> Int {
    cpuTicks(statPath: "/proc/\(pid)/stat")
}

private func cpuTicks(statPath: String) -> Int {
    guard let text = try? String(contentsOfFile: statPath, encoding: .utf8),
          let close = text.lastIndex(of: ")") else { return -1 }
    let fields = text[text.index(after: close)...].split(separator: " ")
    // After the command: state(0) ppid(1) ... utime is field 14 overall => index 11 here, stime 12.
    guard fields.count > 12, let u = Int(fields[11]), let s = Int(fields[12]) else { return -1 }
    return u + s
}

/// A `switchyard-echo` subprocess (the echo server on the reactor alone) whose first stdout line carries its bound
/// `127.0.0.1:PORT`.
final class ChildServer: @unchecked Sendable {
    let process: Process
    let port: UInt16
    private let stdoutPipe: Pipe

    /// `fileLimit` sets RLIMIT_NOFILE in the child (through the shell's ulimit).
    init(arguments: [String], fileLimit: Int? = nil) throws {
        let exe = switchyardEchoExecutable()
        guard FileManager.default.isExecutableFile(atPath: exe) else {
            throw TestFailure("switchyard-echo not found at \(exe); run `swift build` before `swift test`")
        }
        process = Process()
        process.executableURL = URL(fileURLWithPath: "/bin/sh")
        let quoted = ([exe] + arguments).map { "'\($0)'" }.joined(separator: " ")
        let limit = fileLimit.map { "ulimit -n \($0) && " } ?? ""
        process.arguments = ["-c", "\(limit)exec \(quoted)"]
        stdoutPipe = Pipe()
        process.standardOutput = stdoutPipe
        try process.run()
        // The first line names the bound address.
        var line = [UInt8]()
        let handle = stdoutPipe.fileHandleForReading
        while true {
            let byte = try handle.read(upToCount: 1) ?? Data()
            if byte.isEmpty { break }
            if byte[0] == UInt8(ascii: "\n") { break }
            line.append(byte[0])
        }
        let text = String(decoding: line, as: UTF8.self)
        guard let range = text.range(of: #"127\.0\.0\.1:(\d+)"#, options: .regularExpression),
              let p = UInt16(text[range].split(separator: ":")[1]) else {
            process.terminate()
            throw TestFailure("child server did not print its address; got: \(text)")
        }
        port = p
    }

    var pid: Int32 { process.processIdentifier }

    /// SIGTERM, then wait; returns the exit status.
    @discardableResult
    func stop() -> Int32 {
        if process.isRunning { kill(process.processIdentifier, SIGTERM) }
        process.waitUntilExit()
        return process.terminationStatus
    }
}

extension ChildServer {
    /// SIGTERM, then waits up to `timeout` seconds for the exit; SIGKILL after that. Returns the exit status, or
    /// nil when the child had to be killed (so a hung child fails the test instead of hanging it).
    func stop(within timeout: Double) -> Int32? {
        if process.isRunning { kill(process.processIdentifier, SIGTERM) }
        return waitForExit(within: timeout)
    }

    /// Waits up to `timeout` seconds for the child to exit by itself (no signal sent); SIGKILL after that.
    /// Returns the exit status, or nil when the child had to be killed.
    func waitForExit(within timeout: Double) -> Int32? {
        if !eventually(timeout: timeout, { !process.isRunning }) {
            kill(process.processIdentifier, SIGKILL)
            process.waitUntilExit()
            return nil
        }
        process.waitUntilExit()
        return process.terminationStatus
    }
}

/// Descriptors of this process that are sockets bound to local port `port`: a server's listener and the
/// connections it accepted. Unlike a process-wide descriptor count, descriptors that tests running in parallel
/// open and close do not change it. (getsockname on each descriptor is a harmless query even if the number was
/// just reused.) -1 if /proc/self/fd cannot be read.
func openSocketCount(localPort port: UInt16) -> Int {
    guard let fds = try? FileManager.default.contentsOfDirectory(atPath: "/proc/self/fd") else { return -1 }
    return fds.compactMap { Int32($0) }.filter { fd in
        var sin = sockaddr_in()
        var len = socklen_t(MemoryLayout<sockaddr_in>.size)
        let r = withUnsafeMutablePointer(to: &sin) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &len) }
        }
        return r == 0 && sin.sin_family == sa_family_t(AF_INET) && UInt16(bigEndian: sin.sin_port) == port
    }.count
}
