import Dispatch
import LarsWire
import Foundation
import LarsProtocol
import Messaging
import Reactor
import SwiftProtobuf
import Synchronization

/// The protobuf echo used by `switchyard bench`: a server that answers every `Switchyard_Bench_EchoMessage` with
/// the same message, and a ping-pong load (the seed log's QPS test).
public enum EchoBenchmark {
    /// A router whose `BenchMessageID.echo` route decodes the body and sends the message back re-encoded.
    public static func makeEchoRouter() -> MessageRouter<TCPConnection> {
        let router = MessageRouter<TCPConnection>()
        try! router.on(BenchMessageID.echo, as: Switchyard_Bench_EchoMessage.self) { message, inbound in
            inbound.connection.send(message, id: BenchMessageID.echo)
        }
        return router
    }

    /// Settings of a QPS run.
    public struct QPSOptions: Sendable {
        public var connections: Int
        public var seconds: Int
        public var payloadSize: Int
        public init(connections: Int, seconds: Int, payloadSize: Int) {
            self.connections = connections
            self.seconds = seconds
            self.payloadSize = payloadSize
        }
    }

    /// The outcome of a QPS run.
    public struct QPSResult: Sendable {
        /// Messages echoed in each whole second.
        public var perSecond: [Int]
        public var total: Int
        public var seconds: Double
        public var messagesPerSecond: Double { seconds > 0 ? Double(total) / seconds : 0 }
    }

    /// Runs `options.connections` ping-pong connections against `address` on `group`'s loops for
    /// `options.seconds`: each sends an echo message and sends the next when the reply arrives. `report` is called
    /// once per second with the count of that second. Blocks the calling thread (not a loop thread).
    public static func runQPS(
        group: EventLoopGroup, address: SocketAddress, options: QPSOptions,
        report: @escaping @Sendable (Int, Int) -> Void = { _, _ in }
    ) throws -> QPSResult {
        let counter = Atomic<Int>(0)
        let connected = DispatchSemaphore(value: 0)
        let failures = Atomic<Int>(0)
        var message = Switchyard_Bench_EchoMessage()
        message.payload = Data(repeating: 0x5A, count: options.payloadSize)
        let body: [UInt8] = try message.serializedBytes()
        let router = MessageRouter<TCPConnection>()
        try router.on(BenchMessageID.echo) { inbound in
            counter.wrappingAdd(1, ordering: .relaxed)
            // Decode and re-encode, as a real client would.
            var reply = try Switchyard_Bench_EchoMessage(serializedBytes: inbound.body.bytes)
            reply.seq &+= 1
            inbound.connection.send(reply, id: BenchMessageID.echo)
        }
        var clients: [FramedClient] = []
        for i in 0..<options.connections {
            let loop = group.ioLoops[i % group.ioLoops.count]
            let client = try FramedClient(
                loop: loop,
                configuration: FramedClientConfiguration(
                    client: ClientConfiguration(host: address.host, port: Int(address.port), reconnect: false)),
                router: router,
                onConnect: { connection in
                    connected.signal()
                    _ = body.withUnsafeBytes { connection.sendFrameInLoop(messageID: BenchMessageID.echo.rawValue, body: $0) }
                },
                onConnectFailed: { _ in
                    failures.wrappingAdd(1, ordering: .relaxed)
                    connected.signal()
                })
            clients.append(client)
            client.connect()
        }
        for _ in 0..<options.connections { connected.wait() }
        if failures.load(ordering: .relaxed) > 0 {
            for c in clients { c.disconnect() }
            throw IOError(errnoCode: 111, call: "connect \(address) (\(failures.load(ordering: .relaxed)) failed)")
        }
        var perSecond: [Int] = []
        let start = SystemInfo.monotonicNanoseconds()
        var last = counter.load(ordering: .relaxed)
        for second in 1...max(1, options.seconds) {
            let target = start + UInt64(second) * 1_000_000_000
            let now = SystemInfo.monotonicNanoseconds()
            if target > now { usleepNanoseconds(target - now) }
            let current = counter.load(ordering: .relaxed)
            perSecond.append(current - last)
            report(second, current - last)
            last = current
        }
        let elapsed = Double(SystemInfo.monotonicNanoseconds() - start) / 1e9
        for c in clients { c.disconnect() }
        return QPSResult(perSecond: perSecond, total: perSecond.reduce(0, +), seconds: elapsed)
    }

    private static func usleepNanoseconds(_ ns: UInt64) {
        let sem = DispatchSemaphore(value: 0)
        _ = sem.wait(timeout: .now() + .nanoseconds(Int(ns)))
    }
}
