import ArgumentParser
import Chat
import Foundation
import Logging
import Reactor
import Storage

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

    func validate() throws {
        guard members >= 1 && members <= 20_000 else { throw ValidationError("--members must be 1...20000") }
        guard messages >= 1 else { throw ValidationError("--messages must be positive") }
        guard size >= 24 && size <= 4000 else { throw ValidationError("--size must be 24...4000") }
        guard window >= 1 && window <= 1024 else { throw ValidationError("--window must be 1...1024") }
    }

    func run() async throws {
        let logger = Logger(label: "switchyard.bench.chat", factory: { _ in SwiftLogNoOpLogHandler() })
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("chat-bench-\(UUID().uuidString).sqlite").path
        let url = db ?? "sqlite:" + path
        defer { if db == nil { try? FileManager.default.removeItem(atPath: path) } }
        let pool = try ConnectionPool(url: url, logger: logger)
        let serverGroup = try EventLoopGroup(ioLoops: threads)
        let clientGroup = try EventLoopGroup(ioLoops: 1)
        let server = ChatServer(
            group: serverGroup,
            configuration: ChatConfiguration(idleTimeout: nil, maxMessageBytes: 4096, messagesPerSecond: 1_000_000,
                                             maxQueuedOutputBytes: 64 << 20,
                                             passwordIterations: PasswordHasher.minimumIterations),
            pool: pool, logger: logger)
        let address = try await server.start()
        let port = Int(address.port)
        announce("chat fan-out: \(members) members, \(messages) messages of \(size) bytes, window \(window)")

        // Members: register and log in (the password KDF makes this the slow part), then join.
        var clients: [ChatClient] = []
        for i in 0..<members {
            let c = try await ChatClient.connect(port: port, loop: clientGroup.next(), heartbeatInterval: nil,
                                                 requestTimeout: .seconds(60))
            try await c.register(name: "m\(i)", password: "bench")
            try await c.login(name: "m\(i)", password: "bench")
            try await c.join("bench")
            clients.append(c)
        }
        announce("members joined; sending")

        let expected = messages
        let receivers = clients.map { c in
            Task {
                var mine: [UInt64] = []
                mine.reserveCapacity(expected)
                for await event in c.events {
                    guard case .roomMessage(let m) = event else { continue }
                    let sent = UInt64(m.text.prefix(while: { $0 != " " })) ?? 0
                    mine.append(SystemInfo.monotonicNanoseconds() &- sent)
                    if mine.count == expected { break }
                }
                return mine
            }
        }
        let sender = clients[0]
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
        var all: [UInt64] = []
        for r in receivers { all += await r.value }
        let elapsed = Double(SystemInfo.monotonicNanoseconds() - start) / 1e9
        all.sort()
        func pct(_ p: Double) -> Double {
            all.isEmpty ? 0 : Double(all[min(all.count - 1, Int(Double(all.count) * p))]) / 1e6
        }
        let delivered = all.count
        announce("delivered \(delivered) messages in \(format2(elapsed)) s = \(Int(Double(delivered) / elapsed)) msgs/s; "
                 + "latency p50 \(format2(pct(0.5))) ms, p99 \(format2(pct(0.99))) ms, max \(format2(pct(1.0))) ms")
        for c in clients { await c.close() }
        await server.shutdown(timeout: .seconds(2))
        serverGroup.shutdown()
        clientGroup.shutdown()
        await pool.close()
    }
}
