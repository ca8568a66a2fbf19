import Foundation
import Synchronization
import TestSupport
#if canImport(Glibc)
import Glibc
#endif

/// A pseudo-terminal for driving a terminal program: the test writes keystrokes to the master and reads what the
/// program draws from it; the program gets the slave as its terminal. Reads wait with poll() and a deadline.
/// Safe to use from any task; one `waitFor` at a time.
final class PseudoTerminal: Sendable {
    let master: Int32
    let slave: Int32
    /// Everything read from the master so far.
    private let output = Mutex<[UInt8]>([])

    init() throws {
        var master: Int32 = -1
        var slave: Int32 = -1
        guard openpty(&master, &slave, nil, nil, nil) == 0 else { throw TestFailure("openpty: errno \(errno)") }
        // Only the child's copies (dup2'ed to 0, 1, 2) are to outlive an exec.
        _ = fcntl(master, F_SETFD, FD_CLOEXEC)
        _ = fcntl(slave, F_SETFD, FD_CLOEXEC)
        self.master = master
        self.slave = slave
    }

    func close() {
        Glibc.close(master)
        Glibc.close(slave)
    }

    /// The slave's current settings.
    func slaveSettings() throws -> termios {
        var settings = termios()
        guard tcgetattr(slave, &settings) == 0 else { throw TestFailure("tcgetattr: errno \(errno)") }
        return settings
    }

    /// Writes keystrokes to the master, as if typed.
    func type(_ keys: String) throws {
        let bytes = Array(keys.utf8)
        var offset = 0
        while offset < bytes.count {
            let n = bytes.withUnsafeBytes { write(master, $0.baseAddress! + offset, $0.count - offset) }
            if n < 0 && errno == EINTR { continue }
            guard n > 0 else { throw TestFailure("write to the terminal: errno \(errno)") }
            offset += n
        }
    }

    /// Reads from the master until `text` shows up at or after byte `offset` of the output; returns the offset just
    /// past it. Fails after `timeout` seconds with what the terminal showed.
    func waitFor(_ text: String, after offset: Int = 0, timeout: Double = 30) async throws -> Int {
        let deadline = ContinuousClock.now + .milliseconds(Int(timeout * 1000))
        return try await onThread { try self.readUntil(Array(text.utf8), from: offset, deadline: deadline) }
    }

    /// The output so far, control characters made visible (ESC as `\e`, CR as `\r`).
    var transcript: String {
        String(decoding: output.withLock { $0 }, as: UTF8.self)
            .replacingOccurrences(of: "\u{1B}", with: "\\e")
            .replacingOccurrences(of: "\r", with: "\\r")
    }

    private func readUntil(_ needle: [UInt8], from offset: Int, deadline: ContinuousClock.Instant) throws -> Int {
        var chunk = [UInt8](repeating: 0, count: 4096)
        while true {
            if let end = output.withLock({ Self.find(needle, in: $0, from: offset) }) { return end }
            let left = ContinuousClock.now.duration(to: deadline)
            guard left > .zero else {
                let text = String(decoding: needle, as: UTF8.self)
                throw TestFailure("no \"\(text)\" on the terminal in time; it showed:\n\(transcript)")
            }
            var fds = pollfd(fd: master, events: Int16(POLLIN), revents: 0)
            let ready = poll(&fds, 1, Int32(left.components.seconds * 1000 + 1))
            if ready < 0 && errno == EINTR { continue }
            guard ready >= 0 else { throw TestFailure("poll: errno \(errno)") }
            if ready == 0 { continue }
            let n = chunk.withUnsafeMutableBytes { read(master, $0.baseAddress, $0.count) }
            if n < 0 && (errno == EINTR || errno == EAGAIN) { continue }
            guard n > 0 else { throw TestFailure("the terminal closed (errno \(errno)); it showed:\n\(transcript)") }
            output.withLock { $0 += chunk[..<n] }
        }
    }

    private static func find(_ needle: [UInt8], in haystack: [UInt8], from offset: Int) -> Int? {
        guard needle.count <= haystack.count else { return nil }
        var start = offset
        while start + needle.count <= haystack.count {
            if haystack[start..<start + needle.count].elementsEqual(needle) { return start + needle.count }
            start += 1
        }
        return nil
    }
}

/// A child process with a pseudo-terminal's slave as stdin, stdout and stderr.
final class TerminalChild: Sendable {
    private struct Exit {
        var status: Int32?
        var waiters: [CheckedContinuation<Int32, Never>] = []
    }

    private let process: Process
    private let exit = Mutex(Exit())
    private let killedForTimeout = Atomic<Bool>(false)

    init(_ executable: String, _ arguments: [String], terminal: PseudoTerminal) throws {
        process = Process()
        process.executableURL = URL(fileURLWithPath: executable)
        process.arguments = arguments
        let handle = FileHandle(fileDescriptor: terminal.slave, closeOnDealloc: false)
        process.standardInput = handle
        process.standardOutput = handle
        process.standardError = handle
        process.terminationHandler = { [weak self] process in
            guard let self else { return }
            let waiters = self.exit.withLock { e in
                e.status = process.terminationStatus
                defer { e.waiters = [] }
                return e.waiters
            }
            for w in waiters { w.resume(returning: process.terminationStatus) }
        }
        try process.run()
    }

    /// Sends `signo` to the child.
    func signal(_ signo: Int32) {
        kill(process.processIdentifier, signo)
    }

    /// Waits for the child to exit and returns its exit status (the signal number when a signal ended it). After
    /// `timeout` seconds the child is killed and this throws.
    func exitStatus(timeout: Double = 30) async throws -> Int32 {
        let killer = Task {
            try await Task.sleep(for: .milliseconds(Int(timeout * 1000)))
            self.killedForTimeout.store(true, ordering: .relaxed)
            self.signal(SIGKILL)
        }
        let status = await waitForExit()
        killer.cancel()
        if killedForTimeout.load(ordering: .relaxed) { throw TimedOut(what: "the client to exit") }
        return status
    }

    /// Runs `body`; when it throws, kills the child and waits for it before passing the error on.
    func killedOnError<T>(_ body: () async throws -> T) async throws -> T {
        do {
            return try await body()
        } catch {
            signal(SIGKILL)
            _ = await waitForExit()
            throw error
        }
    }

    private func waitForExit() async -> Int32 {
        await withCheckedContinuation { (c: CheckedContinuation<Int32, Never>) in
            let status = exit.withLock { e -> Int32? in
                if e.status == nil { e.waiters.append(c) }
                return e.status
            }
            if let status { c.resume(returning: status) }
        }
    }
}

extension termios {
    /// True when the local-mode flag is set.
    func has(_ flag: Int32) -> Bool { c_lflag & tcflag_t(flag) != 0 }
    /// The control characters, comparable.
    var controlCharacters: [UInt8] { withUnsafeBytes(of: c_cc) { Array($0) } }
}

/// Runs blocking `body` on a thread of its own (not one of the cooperative pool's few threads).
func onThread<T: Sendable>(_ body: @escaping @Sendable () throws -> T) async throws -> T {
    try await withCheckedThrowingContinuation { (c: CheckedContinuation<T, Error>) in
        Thread.detachNewThread { c.resume(with: Result { try body() }) }
    }
}
