import Dispatch
import Foundation
import Reactor
import Synchronization
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// A plain blocking TCP socket for the client side of tests, independent of the reactor under test.
final class BlockingSocket: @unchecked Sendable {
    let fd: Int32
    /// Closing twice would close whatever descriptor another test opened under the same number meanwhile.
    private let isClosed = Atomic<Bool>(false)

    init(port: UInt16, host: String = "127.0.0.1") throws {
        fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { throw POSIXError(.init(rawValue: errno)!) }
        var sin = sockaddr_in()
        sin.sin_family = sa_family_t(AF_INET)
        sin.sin_port = port.bigEndian
        inet_pton(AF_INET, host, &sin.sin_addr)
        let r = withUnsafePointer(to: &sin) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                Glibc.connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size))
            }
        }
        if r < 0 {
            let e = errno
            Glibc.close(fd)
            throw POSIXError(.init(rawValue: e)!)
        }
    }

    /// Sets a receive timeout so a broken server fails the test instead of hanging it.
    func setReceiveTimeout(seconds: Int) {
        var tv = timeval(tv_sec: seconds, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
    }

    func sendAll(_ bytes: [UInt8]) throws {
        try bytes.withUnsafeBytes { raw in
            var off = 0
            while off < raw.count {
                let n = Glibc.send(fd, raw.baseAddress! + off, raw.count - off, Int32(MSG_NOSIGNAL))
                if n < 0 {
                    if errno == EINTR { continue }
                    throw POSIXError(.init(rawValue: errno)!)
                }
                off += n
            }
        }
    }

    /// Reads exactly `count` bytes (fewer if the peer closes first).
    func receive(exactly count: Int) throws -> [UInt8] {
        var out = [UInt8](repeating: 0, count: count)
        var got = 0
        while got < count {
            let n = out.withUnsafeMutableBytes { Glibc.recv(fd, $0.baseAddress! + got, count - got, 0) }
            if n < 0 {
                if errno == EINTR { continue }
                throw POSIXError(.init(rawValue: errno)!)
            }
            if n == 0 { break }
            got += n
        }
        return Array(out[0..<got])
    }

    /// Reads until the peer closes; returns everything read.
    func receiveUntilClose(limit: Int = 1 << 30) throws -> [UInt8] {
        var out: [UInt8] = []
        var buf = [UInt8](repeating: 0, count: 65536)
        while out.count < limit {
            let n = buf.withUnsafeMutableBytes { Glibc.recv(fd, $0.baseAddress!, $0.count, 0) }
            if n < 0 {
                if errno == EINTR { continue }
                throw POSIXError(.init(rawValue: errno)!)
            }
            if n == 0 { break }
            out.append(contentsOf: buf[0..<n])
        }
        return out
    }

    func shutdownWrite() { Glibc.shutdown(fd, Int32(SHUT_WR)) }

    /// Closes with an RST instead of a FIN (SO_LINGER 0).
    func reset() {
        var lg = linger(l_onoff: 1, l_linger: 0)
        setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, socklen_t(MemoryLayout<linger>.size))
        close()
    }

    /// Closes the descriptor; a second call does nothing.
    func close() {
        if !isClosed.exchange(true, ordering: .acquiringAndReleasing) { Glibc.close(fd) }
    }
}

/// Counts events and lets a test wait for a number of them (no sleeps).
final class EventCounter: Sendable {
    private let state = Mutex<Int>(0)
    private let semaphore = DispatchSemaphore(value: 0)

    func signal() {
        state.withLock { $0 += 1 }
        semaphore.signal()
    }

    var count: Int { state.withLock { $0 } }

    /// Waits until `n` events have been signalled in all; false on timeout.
    func wait(for n: Int, timeout: Double = 10) -> Bool {
        let deadline = DispatchTime.now() + timeout
        while count < n {
            if semaphore.wait(timeout: deadline) == .timedOut { return count >= n }
        }
        return true
    }
}

/// A value shared between a loop callback and the test.
final class Shared<T: Sendable>: Sendable {
    private let value: Mutex<T>
    init(_ v: T) { value = Mutex(v) }
    func get() -> T { value.withLock { $0 } }
    func set(_ v: T) { value.withLock { $0 = v } }
    func update(_ f: (inout T) -> Void) { value.withLock { f(&$0) } }
}

/// Runs `body` on `loop` and returns its result (the test thread waits).
func onLoop<T: Sendable>(_ loop: EventLoop, _ body: @escaping @Sendable () -> T) -> T {
    let result = Shared<T?>(nil)
    let done = DispatchSemaphore(value: 0)
    loop.execute {
        result.set(body())
        done.signal()
    }
    done.wait()
    return result.get()!
}

/// Polls an observable condition until it holds (each check is cheap), failing after `timeout` seconds.
func eventually(timeout: Double = 10, _ condition: () -> Bool) -> Bool {
    let deadline = Date().addingTimeInterval(timeout)
    while Date() < deadline {
        if condition() { return true }
        usleep(2000)
    }
    return condition()
}

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
    let group = try EventLoopGroup(ioLoops: ioLoops, configuration: LoopConfiguration(poller: poller),
                                   placement: .roundRobin)  // every loop serves: cross-loop paths stay covered
    defer { group.shutdown() }
    let server = TCPServer(
        group: group, configuration: ServerConfiguration(port: 0, connection: connection),
        callbacks: EchoService.callbacks(onConnect: onConnect, onClose: onClose))
    let address = try server.start()
    defer { server.shutdown(timeout: .seconds(2)) }
    return try body(server, address.port)
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

/// The `switchyard` executable built next to the test bundle.
func switchyardExecutable() -> String {
    let exe = URL(fileURLWithPath: "/proc/self/exe").resolvingSymlinksInPath()
    var dir = exe.deletingLastPathComponent()
    // The test runner may live inside a bundle folder; walk up to the build folder.
    for _ in 0..<4 {
        let candidate = dir.appendingPathComponent("switchyard").path
        if FileManager.default.isExecutableFile(atPath: candidate) { return candidate }
        dir = dir.deletingLastPathComponent()
    }
    return dir.appendingPathComponent("switchyard").path
}

/// A `switchyard` subprocess whose first stdout line carries its bound `127.0.0.1:PORT`.
final class ChildServer: @unchecked Sendable {
    let process: Process
    let port: UInt16
    private let stdoutPipe: Pipe

    /// `fileLimit` sets RLIMIT_NOFILE in the child (through the shell's ulimit).
    init(executable name: String = "switchyard", arguments: [String], fileLimit: Int? = nil) throws {
        let exe = URL(fileURLWithPath: switchyardExecutable()).deletingLastPathComponent()
            .appendingPathComponent(name).path
        guard FileManager.default.isExecutableFile(atPath: exe) else {
            throw TestFailure("\(name) executable not found at \(exe); run `swift build` before `swift test`")
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

struct TestFailure: Error, CustomStringConvertible {
    let description: String
    init(_ d: String) { description = d }
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
