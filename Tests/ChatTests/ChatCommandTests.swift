import Foundation
import Synchronization
import Testing
import TestSupport
#if canImport(Glibc)
import Glibc
#endif

extension ChatSocketTests {
    @Suite("switchyard chat") struct Command {}
}

extension ChatSocketTests.Command {
    /// A port another socket listens on: one line on stderr saying what failed, exit 1, and no address line.
    @Test func portAlreadyTakenIsAOneLineError() async throws {
        let exe = switchyardExecutable()
        try #require(FileManager.default.isExecutableFile(atPath: exe), "build switchyard before the tests")
        let (fd, port) = try boundLoopbackSocket(listenBacklog: 8)
        defer { Glibc.close(fd) }
        let db = temporarySQLiteURL("chat-port-taken")
        let child = try await runToExit(exe, ["chat", "--port", "\(port)", "--db", db, "--threads", "1"])
        #expect(child.status == 1, "\(child)")
        // One line says it (logs may come before it on stderr).
        let failure = child.stderr.split(separator: "\n").filter { $0.hasPrefix("Error:") }
        #expect(failure.count == 1, "\(child)")
        #expect(failure.first?.hasPrefix("Error: chat: cannot start on 127.0.0.1:\(port) with \(db): ") == true,
                "\(child)")
        #expect(!child.stdout.contains("chat listening"), "\(child)")
    }
}

/// What a child process left: its exit status and both outputs.
struct ChildResult: CustomStringConvertible {
    var status: Int32
    var stdout: String
    var stderr: String
    var description: String { "status \(status), stdout: \(stdout), stderr: \(stderr)" }
}

/// Runs `exe` with `arguments` to its end (killed after 30 s) on a thread of its own.
func runToExit(_ exe: String, _ arguments: [String]) async throws -> ChildResult {
    try await withCheckedThrowingContinuation { (c: CheckedContinuation<ChildResult, Error>) in
        Thread.detachNewThread {
            let process = Process()
            process.executableURL = URL(fileURLWithPath: exe)
            process.arguments = arguments
            let out = Pipe()
            let err = Pipe()
            process.standardOutput = out
            process.standardError = err
            process.standardInput = FileHandle.nullDevice
            do { try process.run() } catch { return c.resume(throwing: error) }
            let killer = DispatchWorkItem { if process.isRunning { process.terminate() } }
            DispatchQueue.global().asyncAfter(deadline: .now() + 30, execute: killer)
            // Both pipes to the end before waiting, so a chatty child never blocks on a full pipe.
            let errData = Mutex(Data())
            let done = DispatchSemaphore(value: 0)
            Thread.detachNewThread {
                errData.withLock { $0 = err.fileHandleForReading.readDataToEndOfFile() }
                done.signal()
            }
            let outData = out.fileHandleForReading.readDataToEndOfFile()
            done.wait()
            process.waitUntilExit()
            killer.cancel()
            c.resume(returning: ChildResult(status: process.terminationStatus,
                                            stdout: String(decoding: outData, as: UTF8.self),
                                            stderr: String(decoding: errData.withLock { $0 }, as: UTF8.self)))
        }
    }
}
