import EchoServer
import Foundation
import Reactor
import Testing
import TestSupport

#if canImport(Glibc)
import Glibc
#endif

@Suite("ConnectionOptions.idleTimeout", .serialized)
struct IdleTimeoutTests {
    @Test("silent connections are closed at the idle timeout, with one log line for all; a talking one stays",
          arguments: PollerKind.allCases)
    func silentClosedTalkingKept(poller: PollerKind) throws {
        let lines = Shared<[CapturedLog]>([])
        try withGroup(poller: poller) { group in
            let server = TCPServer(
                group: group,
                configuration: ServerConfiguration(
                    port: 0, connection: ConnectionOptions(idleTimeout: .milliseconds(1500))),
                callbacks: EchoService.callbacks(), logger: CapturingLogHandler.logger(into: lines, level: .info))
            let port = try server.start().port
            defer { server.shutdown(timeout: .seconds(2)) }
            let talker = try BlockingSocket(port: port, receiveTimeout: 10)
            defer { talker.close() }
            let start = SystemInfo.monotonicNanoseconds()
            let silent = try (0..<10).map { _ in try BlockingSocket(port: port, receiveTimeout: 10) }
            defer { for s in silent { s.close() } }
            // The talker echoes every 100 ms until the silent ones are gone.
            let stop = Shared(false)
            let talked = EventCounter()
            let talkerOK = Shared(true)
            Thread {
                while !stop.get() {
                    if (try? talker.sendAll([1, 2, 3])) == nil || (try? talker.receive(exactly: 3)) != [1, 2, 3] {
                        talkerOK.set(false)
                        break
                    }
                    usleep(100_000)  // the talker's pace
                }
                talked.signal()
            }.start()
            for s in silent { #expect(s.seesClose()) }
            let elapsed = secondsSince(start)
            stop.set(true)
            #expect(talked.wait(for: 1))
            #expect(talkerOK.get())
            #expect(elapsed >= 1.45, "closed after \(elapsed) s")
            #expect(eventually { server.idleClosedCount == 10 })
            #expect(server.connectionCount == 1)
            let logged = lines.get().filter { $0.message.contains("idle timeout") }
            #expect(logged.count == 1, "\(logged.map(\.message))")
        }
    }

    @Test("switchyard-echo --idle-timeout closes a silent client and keeps serving")
    func echoFlag() throws {
        let child = try ChildServer(arguments: ["--port", "0", "--threads", "1", "--idle-timeout", "1"])
        defer { child.stop() }
        let start = SystemInfo.monotonicNanoseconds()
        let silent = try BlockingSocket(port: child.port, receiveTimeout: 10)
        defer { silent.close() }
        #expect(silent.seesClose())
        let elapsed = secondsSince(start)
        #expect(elapsed >= 0.9 && elapsed < 5, "closed after \(elapsed) s")
        let client = try BlockingSocket(port: child.port, receiveTimeout: 10)
        defer { client.close() }
        try client.sendAll([7, 8, 9])
        #expect(try client.receive(exactly: 3) == [7, 8, 9])
    }
}

/// Seconds since `start` (monotonic).
private func secondsSince(_ start: UInt64) -> Double { Double(SystemInfo.monotonicNanoseconds() - start) / 1e9 }
