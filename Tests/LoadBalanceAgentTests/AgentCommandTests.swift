import Foundation
import LarsProtocol
import LoadBalanceAgent
import LoadBalanceClient
import LoadBalancing
import Messaging
import Reactor
import TestSupport
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// The commands of this part run as child processes: `switchyard agent` and `switchyard register`.
@Suite("switchyard agent and register (the commands)", .serialized)
struct AgentCommandTests {
    /// Starts `switchyard ARGS` and returns the process, its stdout pipe and its first stdout line.
    private func launch(_ arguments: [String]) throws -> (Process, String) {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: switchyardExecutable())
        process.arguments = arguments
        let output = Pipe()
        process.standardOutput = output
        process.standardError = FileHandle.nullDevice
        try process.run()
        var line = Data()
        while !line.contains(UInt8(ascii: "\n")) {
            let chunk = output.fileHandleForReading.availableData
            if chunk.isEmpty { break }
            line.append(chunk)
        }
        return (process, String(decoding: line, as: UTF8.self))
    }

    @Test("a UDP port already bound: the agent exits 1 with one line naming the failure")
    func portTaken() throws {
        let taken = try boundLoopbackSocket(type: Int32(SOCK_DGRAM.rawValue))
        defer { close(taken.fd) }
        let process = Process()
        process.executableURL = URL(fileURLWithPath: switchyardExecutable())
        process.arguments = ["agent", "--ports", "\(taken.port),0,0", "--names", "127.0.0.1:1",
                             "--reporter", "127.0.0.1:1"]
        let errors = Pipe()
        let output = Pipe()
        process.standardError = errors
        process.standardOutput = output
        try process.run()
        let text = String(decoding: errors.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        let printed = String(decoding: output.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        process.waitUntilExit()
        #expect(process.terminationStatus == 1)
        let lines = text.split(separator: "\n")
        #expect(lines.count == 1, "\(text)")
        #expect(lines.first?.contains("agent: cannot start: bind udp 127.0.0.1:\(taken.port)") == true, "\(text)")
        #expect(printed.isEmpty, "nothing announced: \(printed)")
    }

    @Test("SIGTERM: the agent sends the calls reported since the last interval, then exits 0")
    func agentDrainsItsReportsOnSIGTERM() async throws {
        let group = try EventLoopGroup(ioLoops: 1)
        defer { group.shutdown() }
        let reporter = try FakeReporter(group: group)
        defer { reporter.stop() }
        let file = FileManager.default.temporaryDirectory.appendingPathComponent("lb-cli-\(UUID()).json").path
        defer { try? FileManager.default.removeItem(atPath: file) }
        try RouteCacheFile(path: file).save([route12: [h1]])
        // A report interval of ten minutes: only the shutdown can send the report.
        let (process, line) = try launch([
            "agent", "--ports", "0,0,0", "--names", "127.0.0.1:\(try freeTCPPort())",
            "--reporter", "127.0.0.1:\(reporter.port)", "--route-cache", file, "--report-interval-ms", "600000",
            "--caller", "77",
        ])
        defer { if process.isRunning { process.terminate() } }
        #expect(line.hasPrefix("agent listening on udp 127.0.0.1:"), "\(line)")
        let ports = line.split(separator: " ")[4].split(separator: ",").compactMap { Int($0.split(separator: ":")[1]) }
        try #require(ports.count == 3, "\(line)")
        #expect(await eventually { reporter.server.connectionCount == 1 })
        let client = try BlockingLoadBalanceClient(agentPorts: ports, timeout: .seconds(2))
        #expect(try client.getHost(modid: 1, cmdid: 2) == .host(h1))
        for _ in 0..<5 { client.report(modid: 1, cmdid: 2, host: h1, success: true) }
        _ = try client.getRoute(modid: 1, cmdid: 2)  // same socket, same port: the reports were taken before this
        #expect(reporter.snapshot.requests == 0)
        process.terminate()  // SIGTERM
        process.waitUntilExit()
        #expect(process.terminationReason == .exit && process.terminationStatus == 0)
        #expect(await eventually { reporter.snapshot.succ[h1] == 5 })
        #expect(reporter.snapshot.callers == [77])
    }

    @Test("switchyard register: registers with the ttl, and on SIGTERM takes the registration back (ttl 0), exit 0")
    func registerDeregistersOnSIGTERM() async throws {
        let group = try EventLoopGroup(ioLoops: 1)
        defer { group.shutdown() }
        let ttls = Locked<[UInt32]>([])
        let router = MessageRouter<TCPConnection>()
        try router.on(MessageID.registerHostRequest, as: Switchyard_Lb_RegisterHostRequest.self) { request, message in
            #expect(request.modid == 7 && request.cmdid == 1)
            #expect(LoadBalancing.Host(wireIP: request.ip, wirePort: request.port)
                == LoadBalancing.Host(address: "10.0.0.5", port: 9000))
            ttls.withLock { $0.append(request.ttlMs) }
            var reply = Switchyard_Lb_RegisterHostResponse()
            reply.ok = true
            message.connection.send(reply, id: MessageID.registerHostResponse)
        }
        let names = FramedServer(group: group, configuration: FramedServerConfiguration(
            server: ServerConfiguration(port: 0)), router: router)
        let port = try names.start().port
        defer { names.shutdown(timeout: .seconds(1)) }
        let (process, line) = try launch([
            "register", "--modid", "7", "--cmdid", "1", "--ip", "10.0.0.5", "--port", "9000", "--ttl", "10",
            "--names", "127.0.0.1:\(port)",
        ])
        defer { if process.isRunning { process.terminate() } }
        #expect(line == "registering 10.0.0.5:9000 for 7/1 with 127.0.0.1:\(port), ttl 10.0 s "
                + "(Ctrl-C to take it back)\n")
        #expect(await eventually { ttls.withLock { $0 } == [10_000] })
        process.terminate()  // SIGTERM
        process.waitUntilExit()
        #expect(process.terminationReason == .exit && process.terminationStatus == 0)
        #expect(await eventually { ttls.withLock { $0 } == [10_000, 0] })
    }
}
