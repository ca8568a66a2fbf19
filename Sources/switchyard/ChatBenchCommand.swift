import ArgumentParser
import Chat
import Foundation
import Logging
import SwitchyardBench
import Messaging
import Reactor
import ServiceLifecycle
import Storage
import SwitchyardCore
import Synchronization

struct ChatBenchCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "chat",
        abstract: "Chat fan-out: one sender, a room of N members; delivered messages/s and p99 delivery latency."
    )

    @Option(help: "Room members (the sender included).") var members = 100
    @Option(help: "Messages the sender sends.") var messages = 1000
    @Option(help: "Payload bytes per message.") var size = 64
    @Option(help: "Messages in flight from the sender.") var window = 32
    @Option(help: "Server I/O threads.") var threads = 1
    @Option(help: "Database URL (default: a temporary SQLite file).") var db: String?
    @Option(help: "Port of a running chat server to measure instead of an in-process one.") var port: Int?
    @OptionGroup var output: JSONOutputOption

    /// The `--json` result (latencies from send to each receiver).
    struct Summary: Encodable {
        let members: Int
        let window: Int
        let delivered: Int
        let expected: Int
        let seconds: Double
        let messagesPerSecond: Double
        let p50Ms: Double
        let p99Ms: Double
        let maxMs: Double
    }

    func validate() throws {
        guard members >= 2 && members <= 20_000 else { throw ValidationError("--members must be 2...20000") }
        guard messages >= 1 else { throw ValidationError("--messages must be positive") }
        guard size >= 24 && size <= 4000 else { throw ValidationError("--size must be 24...4000") }
        guard window >= 1 && window <= 1024 else { throw ValidationError("--window must be 1...1024") }
    }

    func run() async throws {
        let logger = Logger(label: "switchyard.bench.chat", factory: { _ in SwiftLogNoOpLogHandler() })
        let clientGroup = try EventLoopGroup(ioLoops: 1)
        if let external = self.port {
            do {
                try await measure(port: external, clientGroup: clientGroup)
            } catch {
                await clientGroup.shutdown()
                throw error
            }
            await clientGroup.shutdown()
            return
        }
        let path = FileManager.default.temporaryDirectory
            .appendingPathComponent("chat-bench-\(UUID().uuidString).sqlite").path
        let url = db ?? "sqlite:" + path
        let pool = try ConnectionPool(url: url, logger: logger)
        let serverGroup = try EventLoopGroup(ioLoops: threads)
        let server = ChatServer(
            group: serverGroup,
            configuration: ChatConfiguration(idleTimeout: nil, maxMessageBytes: 4096, messagesPerSecond: 1_000_000,
                                             maxQueuedOutputBytes: 64 << 20,
                                             passwordIterations: PasswordHasher.minimumIterations,
                                             // Every member comes from 127.0.0.1: no per-source limits here.
                                             maxRequestsInFlightPerSource: 1_000_000, registrationsPerMinute: nil,
                                             drainTimeout: .seconds(2)),
            pool: pool, logger: logger)
        let outcome: Result<Void, Error>
        do {
            let port = Int(try await server.start().port)
            // The server runs as a service beside the measurement, which then shuts it down gracefully.
            let services = ServiceGroup(configuration: ServiceGroupConfiguration(
                services: [ServiceGroupConfiguration.ServiceConfiguration(service: server)], logger: logger))
            outcome = await withTaskGroup(of: Void.self) { tasks in
                tasks.addTask { try? await services.run() }
                let result: Result<Void, Error>
                do {
                    try await measure(port: port, clientGroup: clientGroup)
                    result = .success(())
                } catch {
                    result = .failure(error)
                }
                await services.triggerGracefulShutdown()
                await tasks.waitForAll()
                return result
            }
        } catch {
            outcome = .failure(error)
        }
        await clientGroup.shutdown()
        await serverGroup.shutdown()
        await pool.close()
        if db == nil { try? FileManager.default.removeItem(atPath: path) }
        try outcome.get()
    }

    private func measure(port: Int, clientGroup: EventLoopGroup) async throws {
        if !output.json {
            announce("chat fan-out: \(members) members, \(messages) messages of \(size) bytes, window \(window)")
        }

        // Receivers: register, log in (the password KDF makes this the slow part), join. The sender is a ChatClient.
        let receivers = try await BenchMember.connect(
            count: members - 1, port: port, loops: clientGroup.ioLoops, rooms: ["bench"], heartbeat: nil)
        let sender = try await ChatClient.connect(port: port, loop: clientGroup.next(), heartbeatInterval: nil,
                                                  requestTimeout: .seconds(60))
        do {
            try await sender.register(name: "sender", password: "bench")
        } catch ChatClientError.refused(.nameTaken, _) {}
        _ = try await sender.login(name: "sender", password: "bench")
        _ = try await sender.join("bench")
        if !output.json { announce("members joined; sending") }

        let padding = String(repeating: "x", count: size - 21)
        let start = SystemInfo.monotonicNanoseconds()
        try await withThrowingTaskGroup(of: Void.self) { group in
            let perTask = (messages + window - 1) / window
            for w in 0..<window {
                let count = min(perTask, messages - w * perTask)
                if count <= 0 { break }
                group.addTask {
                    for _ in 0..<count {
                        let now = SystemInfo.monotonicNanoseconds()
                        try await sender.say("\(now) \(padding)", in: "bench")
                    }
                }
            }
            try await group.waitForAll()
        }
        // Every receiver gets every message (or the run gives up after 60 s and reports what arrived).
        let expected = messages * receivers.count
        let deadline = SystemInfo.monotonicNanoseconds() + 60_000_000_000
        var delivered = 0
        while true {
            delivered = receivers.reduce(0) { $0 + $1.receivedCount }
            if delivered >= expected || SystemInfo.monotonicNanoseconds() > deadline { break }
            try await Task.sleep(for: .milliseconds(2))
        }
        let elapsed = Double(SystemInfo.monotonicNanoseconds() - start) / 1e9
        var all = receivers.flatMap(\.received)
        all.sort()
        func pct(_ p: Double) -> Double {
            all.isEmpty ? 0 : Double(all[min(all.count - 1, Int(Double(all.count) * p))]) / 1e6
        }
        if output.json {
            try output.emit(Summary(
                members: members, window: window, delivered: delivered, expected: expected, seconds: elapsed,
                messagesPerSecond: Double(delivered) / elapsed, p50Ms: pct(0.5), p99Ms: pct(0.99), maxMs: pct(1.0)))
        } else {
            announce("delivered \(delivered) of \(expected) messages in \(format2(elapsed)) s = "
                     + "\(Int(Double(delivered) / elapsed)) msgs/s; latency p50 \(format2(pct(0.5))) ms, "
                     + "p99 \(format2(pct(0.99))) ms, max \(format2(pct(1.0))) ms")
        }
        for r in receivers { r.close() }
        await sender.close()
    }
}

struct ChatIdleBenchCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "chat-idle",
        abstract: "Connects N chat users to a running server (`switchyard chat`), logs them in, and keeps them idle.",
        discussion: """
            For measuring the server's memory per connected user: each user registers (or finds its name taken \
            in a reused database), logs in, joins one of --rooms rooms, then only sends heartbeats. Prints \
            "ready N users" once all are in, then holds them until stdin ends or the process is stopped.
            """
    )

    @Option(help: "Server address.") var host = "127.0.0.1"
    @Option(help: "Server port.") var port: Int
    @Option(help: "Users to connect.") var users = 10_000
    @Option(help: "Rooms the users are spread over.") var rooms = 100
    @Option(help: "Seconds between each user's heartbeats.") var heartbeat = 10
    @Option(help: "Client I/O threads.") var threads = 1

    func validate() throws {
        guard (1...65535).contains(port) else { throw ValidationError("--port must be 1...65535, got \(port)") }
        guard (1...100_000).contains(users) else { throw ValidationError("--users must be 1...100000") }
        guard rooms >= 1 else { throw ValidationError("--rooms must be positive") }
        guard heartbeat >= 1 else { throw ValidationError("--heartbeat must be positive") }
        guard (1...64).contains(threads) else { throw ValidationError("--threads must be 1...64") }
    }

    func run() async throws {
        let group = try EventLoopGroup(ioLoops: threads)
        let start = ContinuousClock.now
        let clients: [BenchMember]
        do {
            clients = try await BenchMember.connect(
                count: users, host: host, port: port, loops: group.ioLoops, rooms: (0..<rooms).map { "room\($0)" },
                heartbeat: .seconds(heartbeat)) { done in announce("\(done) users in") }
        } catch {
            await group.shutdown()
            throw error
        }
        announce("ready \(clients.count) users in \(format2((ContinuousClock.now - start).secondsValue)) s")
        // Hold them until stdin ends (or a signal ends the process).
        await withCheckedContinuation { (c: CheckedContinuation<Void, Never>) in
            Thread.detachNewThread {
                var byte: UInt8 = 0
                while read(0, &byte, 1) > 0 {}
                c.resume()
            }
        }
        for c in clients { c.close() }
        await group.shutdown()
    }
}
