import Dispatch
import Foundation
import LarsProtocol
import LarsWire
import Messaging
import Reactor
import Synchronization
import Testing
import TestSupport

extension MessagingSocketTests {
    @Suite("Frames over TCP", .serialized)
    struct FramedTCPTests {
        /// A server that records every frame of id 10 (in arrival order) and signals per frame.
        final class Recorder: Sendable {
            let frames = Shared<[TestFrame]>([])
            let arrived = EventCounter()
            let router = MessageRouter<TCPConnection>()
            init() throws {
                try router.on(TestID(10)) { [frames, arrived] message in
                    frames.update { $0.append(TestFrame(id: message.messageID, body: message.bodyBytes)) }
                    arrived.signal()
                }
                try router.on(TestID(11)) { message in
                    message.connection.sendFrameInLoop(messageID: 11, body: message.body)
                }
            }
        }

        @Test("many frames in one write are all routed, in order, with their bodies", arguments: PollerKind.allCases)
        func manyFramesInOneWrite(poller: PollerKind) throws {
            let recorder = try Recorder()
            try withGroup(poller: poller) { group in
                try withFramedServer(group: group, router: recorder.router) { server, port in
                    let client = try BlockingSocket.frameClient(port: port)
                    defer { client.close() }
                    // Bodies of 0 to 3,000 bytes, one frame ending exactly where the next begins; ~300 KB in all,
                    // so the write spans several reads and frames straddle read boundaries.
                    let expected = (0..<200).map { i in
                        TestFrame(id: 10, body: patternBytes(i % 7 == 0 ? 0 : (i * 37) % 3000, seed: i))
                    }
                    try client.sendAll(expected.flatMap { FrameParser.encode(messageID: $0.id, body: $0.body) })
                    #expect(recorder.arrived.wait(for: expected.count))
                    #expect(recorder.frames.get() == expected)
                    #expect(server.statistics.frames == expected.count)
                    #expect(server.statistics.protocolErrors == 0)
                    // The connection is still in step: a request after them is answered.
                    try client.sendFrame(id: 11, body: [42])
                    #expect(try client.receiveFrame() == TestFrame(id: 11, body: [42]))
                }
            }
        }

        @Test("frames written one byte at a time (one read per byte) are routed whole and in order",
              arguments: PollerKind.allCases)
        func oneByteAtATime(poller: PollerKind) throws {
            let recorder = try Recorder()
            let serverSide = Shared<LoopBound<TCPConnection>?>(nil)
            try withGroup(poller: poller) { group in
                try withFramedServer(group: group, router: recorder.router,
                                     onConnect: { serverSide.set(LoopBound(value: $0)) }) { _, port in
                    let client = try BlockingSocket.frameClient(port: port)
                    defer { client.close() }
                    #expect(eventually { serverSide.get() != nil })
                    let connection = serverSide.get()!.value
                    let loop = connection.loop
                    let expected = [TestFrame(id: 10, body: patternBytes(21, seed: 1)),
                                    TestFrame(id: 10, body: []),
                                    TestFrame(id: 10, body: patternBytes(3, seed: 2))]
                    let bytes = expected.flatMap { FrameParser.encode(messageID: $0.id, body: $0.body) }
                    for (i, byte) in bytes.enumerated() {
                        try client.sendAll([byte])
                        // Wait until the server has read this byte, so every byte is a read of its own.
                        let box = LoopBound(value: connection)
                        #expect(try eventually(interval: 100) {
                            try onLoop(loop) { box.value.bytesRead } == UInt64(i + 1)
                        })
                        let routed = recorder.frames.get().count
                        let whole = expected.indices.filter { k in
                            expected[...k].reduce(0) { $0 + 8 + $1.body.count } <= i + 1
                        }.count
                        #expect(routed == whole, "after byte \(i)")
                    }
                    #expect(recorder.arrived.wait(for: expected.count))
                    #expect(recorder.frames.get() == expected)
                }
            }
        }

        @Test("a negative length closes only that connection", arguments: PollerKind.allCases)
        func negativeLength(poller: PollerKind) throws {
            try closesOnlyOffender(poller: poller, maxBodyLength: FrameParser.defaultMaxBodyLength,
                                   bad: rawHeader(id: 11, length: -1))
            try closesOnlyOffender(poller: poller, maxBodyLength: FrameParser.defaultMaxBodyLength,
                                   bad: rawHeader(id: 11, length: Int32.min) + [1, 2, 3])
        }

        @Test("a length above the server's maxBodyLength closes only that connection; the limit itself passes",
              arguments: PollerKind.allCases)
        func aboveLimit(poller: PollerKind) throws {
            // Only the header is needed for the verdict: the body never comes.
            try closesOnlyOffender(poller: poller, maxBodyLength: 1024, bad: rawHeader(id: 11, length: 1025))
            // The body was sent in full: the server must not wait for it or read past it.
            try closesOnlyOffender(poller: poller, maxBodyLength: 1024,
                                   bad: FrameParser.encode(messageID: 11, body: patternBytes(5000, seed: 3)))
        }

        /// Connects a good and a bad client; the bad one sends `bad` after a valid frame. The bad one sees EOF,
        /// protocolErrors is 1, the good one and a later one keep working.
        private func closesOnlyOffender(poller: PollerKind, maxBodyLength: Int, bad: [UInt8]) throws {
            let closes = EventCounter()
            let recorder = try Recorder()
            try withGroup(poller: poller) { group in
                try withFramedServer(group: group, router: recorder.router, maxBodyLength: maxBodyLength,
                                     onClose: { _ in closes.signal() }) { server, port in
                    let good = try BlockingSocket.frameClient(port: port)
                    defer { good.close() }
                    let offender = try BlockingSocket.frameClient(port: port, receiveTimeout: 5)
                    defer { offender.close() }
                    #expect(eventually { server.connectionCount == 2 })
                    // A body of exactly the limit is fine.
                    let atLimit = patternBytes(min(maxBodyLength, 1024), seed: 9)
                    try offender.sendFrame(id: 11, body: atLimit)
                    #expect(try offender.receiveFrame() == TestFrame(id: 11, body: atLimit))
                    try offender.sendAll(bad)
                    #expect(offender.seesClose())
                    #expect(closes.wait(for: 1))
                    #expect(server.statistics.protocolErrors == 1)
                    #expect(server.connectionCount == 1)
                    try good.sendFrame(id: 11, body: [1, 2, 3])
                    #expect(try good.receiveFrame() == TestFrame(id: 11, body: [1, 2, 3]))
                    let later = try BlockingSocket.frameClient(port: port)
                    defer { later.close() }
                    try later.sendFrame(id: 11, body: [4])
                    #expect(try later.receiveFrame() == TestFrame(id: 11, body: [4]))
                    #expect(closes.count == 1)
                    #expect(server.statistics.protocolErrors == 1)
                }
            }
        }

        @Test("the body limit is per server: the same frame passes one server and closes the other",
              arguments: PollerKind.allCases)
        func limitPerServer(poller: PollerKind) throws {
            try withGroup(poller: poller) { group in
                let body = patternBytes(2000, seed: 4)
                try withFramedServer(group: group, router: try echoRouter(ids: [TestID(11)]), maxBodyLength: 1024) { small, smallPort in
                    try withFramedServer(group: group, router: try echoRouter(ids: [TestID(11)]), maxBodyLength: 4096) { large, largePort in
                        try withFramedServer(group: group, router: try echoRouter(ids: [TestID(11)])) { byDefault, defaultPort in
                            #expect(small.configuration.maxBodyLength == 1024)
                            #expect(byDefault.configuration.maxBodyLength == FrameParser.defaultMaxBodyLength)
                            for port in [largePort, defaultPort] {
                                let client = try BlockingSocket.frameClient(port: port)
                                defer { client.close() }
                                try client.sendFrame(id: 11, body: body)
                                #expect(try client.receiveFrame() == TestFrame(id: 11, body: body))
                            }
                            let client = try BlockingSocket.frameClient(port: smallPort, receiveTimeout: 5)
                            defer { client.close() }
                            try client.sendFrame(id: 11, body: body)
                            #expect(client.seesClose())
                            #expect(eventually { small.statistics.protocolErrors == 1 })
                            #expect(large.statistics.protocolErrors == 0)
                            #expect(byDefault.statistics.protocolErrors == 0)
                            // Above 4 KiB the middle server refuses too.
                            let big = try BlockingSocket.frameClient(port: largePort, receiveTimeout: 5)
                            defer { big.close() }
                            try big.sendAll(rawHeader(id: 11, length: 4097))
                            #expect(big.seesClose())
                            #expect(eventually { large.statistics.protocolErrors == 1 })
                        }
                    }
                }
            }
        }
    }

    @Suite("Sending from any thread", .serialized)
    struct SendFromAnyThreadTests {
        @Test("send(_:id:to:) and broadcast from non-loop threads reach the right clients",
              arguments: PollerKind.allCases)
        func sendByIDAndBroadcast(poller: PollerKind) throws {
            // Server-side connection id by the client's local port.
            let idsByPort = Shared<[UInt16: UInt64]>([:])
            try withGroup(poller: poller) { group in
                try withFramedServer(group: group, router: MessageRouter<TCPConnection>(), onConnect: { c in
                    idsByPort.update { $0[c.peerAddress.port] = c.id }
                }) { server, port in
                    let clients = try (0..<3).map { _ in try BlockingSocket.frameClient(port: port) }
                    defer { for c in clients { c.close() } }
                    #expect(eventually { idsByPort.get().count == 3 })
                    let ids = clients.map { idsByPort.get()[$0.localPort]! }

                    @Sendable func response(_ modid: Int32) -> Lars_GetRouteResponse {
                        var r = Lars_GetRouteResponse()
                        r.modid = modid
                        r.cmdid = 7
                        var host = Lars_HostInfo()
                        host.ip = 0x7F00_0001
                        host.port = 9000 + modid
                        r.host = [host]
                        return r
                    }
                    // From another (non-loop) thread: one message to client 1 by id, then one to all.
                    let sent = EventCounter()
                    let results = Shared<[Bool]>([])
                    let sender = Thread {
                        let ok = server.tcp.send(response(1), id: MessageID.getRouteResponse, to: ids[1])
                        let missing = server.tcp.send(response(5), id: MessageID.getRouteResponse, to: 987_654_321)
                        server.tcp.broadcast(response(99), id: MessageID.getRouteResponse)
                        results.set([ok, missing])
                        sent.signal()
                    }
                    sender.start()
                    #expect(sent.wait(for: 1))
                    #expect(results.get() == [true, false])

                    func nextResponse(_ client: BlockingSocket) throws -> Lars_GetRouteResponse {
                        let frame = try client.receiveFrame()
                        #expect(frame.id == MessageID.getRouteResponse.rawValue)
                        return try Lars_GetRouteResponse(serializedBytes: frame.body)
                    }
                    #expect(try nextResponse(clients[1]) == response(1))
                    for client in clients {
                        #expect(try nextResponse(client) == response(99))
                    }
                    // Nothing else was delivered: a marker sent now is the next frame everywhere.
                    for id in ids { server.tcp.sendFrame(to: id, messageID: 55, body: []) }
                    for client in clients {
                        #expect(try client.receiveFrame() == TestFrame(id: 55, body: []))
                    }
                }
            }
        }

        @Test("frames sent to one connection from several threads at once arrive whole, each thread's in order",
              arguments: PollerKind.allCases)
        func concurrentSenders(poller: PollerKind) throws {
            let serverSide = Shared<LoopBound<TCPConnection>?>(nil)
            try withGroup(poller: poller) { group in
                try withFramedServer(group: group, router: MessageRouter<TCPConnection>(),
                                     onConnect: { serverSide.set(LoopBound(value: $0)) }) { server, port in
                    let client = try BlockingSocket.frameClient(port: port)
                    defer { client.close() }
                    #expect(eventually { serverSide.get() != nil })
                    let connection = serverSide.get()!.value
                    let threads = 4
                    let perThread = 250
                    let done = EventCounter()
                    for t in 0..<threads {
                        Thread {
                            for i in 0..<perThread {
                                var request = Lars_GetHostRequest()
                                request.seq = UInt32(i)
                                request.modid = Int32(t)
                                if i % 2 == 0 {
                                    connection.send(request, id: MessageID.getHostRequest)
                                } else {
                                    server.tcp.send(request, id: MessageID.getHostRequest, to: connection.id)
                                }
                            }
                            done.signal()
                        }.start()
                    }
                    var next = Array(repeating: UInt32(0), count: threads)
                    for _ in 0..<(threads * perThread) {
                        let frame = try client.receiveFrame()
                        #expect(frame.id == MessageID.getHostRequest.rawValue)
                        let request = try Lars_GetHostRequest(serializedBytes: frame.body)
                        let t = Int(request.modid)
                        #expect(request.seq == next[t], "thread \(t)")
                        next[t] = request.seq + 1
                    }
                    #expect(next == Array(repeating: UInt32(perThread), count: threads))
                    #expect(done.wait(for: threads))
                }
            }
        }
    }
}
