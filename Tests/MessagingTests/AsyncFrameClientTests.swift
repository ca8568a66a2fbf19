import Dispatch
import Foundation
import LarsProtocol
import Messaging
import Reactor
import Synchronization
import Testing
import TestSupport

#if canImport(Glibc)
import Glibc
#endif

extension MessagingSocketTests {
    @Suite("Async frame client", .serialized)
    struct AsyncFrameClientTests {
        /// A group and a started framed server, for async tests (no closure scopes across awaits).
        final class Fixture: Sendable {
            let group: EventLoopGroup
            let server: FramedServer
            let port: Int

            init(poller: PollerKind, router: MessageRouter<TCPConnection>) throws {
                group = try EventLoopGroup(ioLoops: 2, configuration: LoopConfiguration(poller: poller),
                                           placement: .roundRobin)
                server = FramedServer(group: group, router: router)
                do {
                    port = Int(try server.start().port)
                } catch {
                    group.shutdown()
                    throw error
                }
            }

            func tearDown() {
                server.shutdown(timeout: .seconds(2))
                group.shutdown()
            }
        }

        @Test("connect, send, receive replies with for-try-await; close ends the sequence",
              arguments: PollerKind.allCases)
        func sendReceiveClose(poller: PollerKind) async throws {
            let fixture = try Fixture(poller: poller, router: try ProtobufTests.routeRouter())
            defer { fixture.tearDown() }
            let client = try await withTimeout(10) {
                try await AsyncFrameClient.connect(port: fixture.port, loop: fixture.group.ioLoops[0])
            }
            var requests: [Lars_GetRouteRequest] = []
            for modid in Int32(1)...10 {
                var request = Lars_GetRouteRequest()
                request.modid = modid
                request.cmdid = -modid
                requests.append(request)
                try await client.send(request, id: MessageID.getRouteRequest)
            }
            let responses = try await withTimeout(10) {
                var out: [Lars_GetRouteResponse] = []
                for try await frame in client.frames {
                    #expect(frame.messageID == MessageID.getRouteResponse.rawValue)
                    out.append(try frame.decode(as: Lars_GetRouteResponse.self))
                    if out.count == 10 { break }
                }
                return out
            }
            #expect(responses == requests.map(ProtobufTests.routeResponse(for:)))

            // A consumer waiting for more frames sees the sequence end when the client closes.
            let consumer = Task {
                var count = 0
                for try await _ in client.frames { count += 1 }
                return count
            }
            try await withTimeout(10) { await client.close() }
            let after = try await withTimeout(10) { try await consumer.value }
            #expect(after == 0)
            #expect(try await withTimeout(10) {
                var iterator = client.frames.makeAsyncIterator()
                return try await iterator.next()
            } == nil)
            await #expect(throws: AsyncClientError.closed) {
                try await client.send(messageID: MessageID.getRouteRequest.rawValue, body: [])
            }
            #expect(await pollUntilAsync { fixture.server.connectionCount == 0 })
        }

        /// Frames sent by tasks on the client's loop are gathered into one write an iteration.
        @Test("frames sent on the client's loop and from other threads all arrive, whole and in each sender's order",
              arguments: PollerKind.allCases)
        func gatheredSendsKeepOrder(poller: PollerKind) async throws {
            let fixture = try Fixture(poller: poller, router: try ProtobufTests.routeRouter())
            defer { fixture.tearDown() }
            let loop = fixture.group.ioLoops[0]
            let client = try await withTimeout(10) { try await AsyncFrameClient.connect(port: fixture.port, loop: loop) }
            let senders = 12
            let perSender = 50
            let collector = Task {
                var modids: [Int32] = []
                for try await frame in client.frames {
                    modids.append(try frame.decode(as: Lars_GetRouteResponse.self).modid)
                    if modids.count == senders * perSender { break }
                }
                return modids
            }
            try await withThrowingTaskGroup(of: Void.self) { group in
                for sender in 0..<senders {
                    // Even senders run on the client's loop (their frames are gathered), odd ones elsewhere.
                    let executor: (any TaskExecutor)? = sender % 2 == 0 ? loop : nil
                    group.addTask(executorPreference: executor) {
                        for n in 0..<perSender {
                            var request = Lars_GetRouteRequest()
                            request.modid = Int32(sender * 1000 + n)
                            try await client.send(request, id: MessageID.getRouteRequest)
                            if n % 7 == 0 { await Task.yield() }
                        }
                    }
                }
                try await group.waitForAll()
            }
            let modids = try await withTimeout(20) { try await collector.value }
            #expect(modids.count == senders * perSender)
            for sender in 0..<senders {
                let mine = modids.filter { Int($0) / 1000 == sender }.map { Int($0) % 1000 }
                #expect(mine == Array(0..<perSender), "sender \(sender)")
            }
            await client.close()
        }

        @Test("a closed client leaves nothing behind: its connection and loop are freed once its group stops",
              arguments: PollerKind.allCases)
        func closedClientIsFreed(poller: PollerKind) async throws {
            let fixture = try Fixture(poller: poller, router: try ProtobufTests.routeRouter())
            defer { fixture.tearDown() }
            weak var clientLoop: EventLoop?
            do {
                let group = try EventLoopGroup(ioLoops: 1, configuration: LoopConfiguration(poller: poller),
                                               placement: .roundRobin)
                clientLoop = group.ioLoops[0]
                let client = try await withTimeout(10) {
                    try await AsyncFrameClient.connect(port: fixture.port, loop: group.ioLoops[0])
                }
                var request = Lars_GetRouteRequest()
                request.modid = 7
                request.cmdid = 8
                try await client.send(request, id: MessageID.getRouteRequest)
                let reply = try await withTimeout(10) {
                    var iterator = client.frames.makeAsyncIterator()
                    return try await iterator.next()
                }
                #expect(reply?.messageID == MessageID.getRouteResponse.rawValue)
                await client.close()
                await group.shutdown()
            }
            // A reference cycle through the connection would keep the loop, its descriptors and its buffers.
            #expect(clientLoop == nil, "the client's loop outlived its group and client")
        }

        @Test("the sequence ends when the server closes the connection", arguments: PollerKind.allCases)
        func serverCloseEndsSequence(poller: PollerKind) async throws {
            let router = MessageRouter<TCPConnection>()
            try router.on(TestID(40)) { message in
                message.connection.sendFrameInLoop(messageID: 41, body: message.body)
                message.connection.close()  // graceful: the reply is flushed first
            }
            let fixture = try Fixture(poller: poller, router: router)
            defer { fixture.tearDown() }
            let client = try await withTimeout(10) {
                try await AsyncFrameClient.connect(port: fixture.port, loop: fixture.group.ioLoops[1])
            }
            try await client.send(messageID: 40, body: [1, 2, 3])
            let frames = try await withTimeout(10) {
                var out: [InboundFrame] = []
                for try await frame in client.frames { out.append(frame) }
                return out
            }
            #expect(frames == [InboundFrame(messageID: 41, body: [1, 2, 3])])
            await client.close()
        }

        @Test("onFrame sees every frame on the loop thread first; the ones it takes skip the sequence, and it can send",
              arguments: PollerKind.allCases)
        func onFrameTakesFrames(poller: PollerKind) async throws {
            let router = MessageRouter<TCPConnection>()
            try router.on(TestID(40)) { message in
                message.connection.sendFrameInLoop(messageID: 41, body: message.body)
            }
            let fixture = try Fixture(poller: poller, router: router)
            defer { fixture.tearDown() }
            let loop = fixture.group.ioLoops[1]
            let taken = Mutex<(frames: [InboundFrame], onLoop: Bool)>(([], true))
            let owner = Mutex<AsyncFrameClient?>(nil)
            let client = try await withTimeout(10) {
                try await AsyncFrameClient.connect(port: fixture.port, loop: loop, onFrame: { frame in
                    guard frame.body.first.map({ $0 % 2 == 0 }) ?? false else { return false }
                    taken.withLock {
                        $0.frames.append(frame)
                        $0.onLoop = $0.onLoop && loop.inLoopThread
                    }
                    // Even bodies below 10 ask for one more (sent from the loop thread), 10 ends the exchange.
                    if let n = frame.body.first, n < 10 {
                        owner.withLock { $0 }?.sendFrame(messageID: 40, body: [n + 2])
                    }
                    return true
                })
            }
            owner.withLock { $0 = client }
            try await client.send(messageID: 40, body: [1])
            try await client.send(messageID: 40, body: [2])
            try await client.send(messageID: 40, body: [3])
            let odd = try await withTimeout(10) {
                var out: [InboundFrame] = []
                for try await frame in client.frames {
                    out.append(frame)
                    if out.count == 2 { break }
                }
                return out
            }
            #expect(odd.map(\.body) == [[1], [3]])
            #expect(await pollUntilAsync { taken.withLock { $0.frames.count } == 5 })
            #expect(taken.withLock { $0.frames.map(\.body) } == [[2], [4], [6], [8], [10]])
            #expect(taken.withLock { $0.onLoop })
            #expect(client.bufferedFrames == 0)
            await client.close()
            #expect(!client.sendFrame(messageID: 40, body: [12]))
            // The handler reaches the client through `owner`: let go of it, or the two keep each other (and the
            // loop) alive.
            owner.withLock { $0 = nil }
        }

        @Test("heartbeats from the peer are not yielded; a bad frame from the peer ends the sequence with an error",
              arguments: PollerKind.allCases)
        func heartbeatsSkippedAndProtocolError(poller: PollerKind) async throws {
            let router = MessageRouter<TCPConnection>()
            try router.on(TestID(60)) { message in
                let c = message.connection
                c.sendFrame(messageID: MessageID.heartbeat.rawValue, body: [])
                c.sendFrame(messageID: 61, body: [1])
                c.sendFrame(messageID: MessageID.heartbeat.rawValue, body: [])
                c.sendFrame(messageID: 62, body: [])
                // Then a header with a negative length.
                c.send(rawHeader(id: 63, length: -7))
            }
            let fixture = try Fixture(poller: poller, router: router)
            defer { fixture.tearDown() }
            let client = try await withTimeout(10) {
                try await AsyncFrameClient.connect(port: fixture.port, loop: fixture.group.ioLoops[0])
            }
            try await client.send(messageID: 60, body: [])
            let (frames, failure) = try await withTimeout(10) { () -> ([InboundFrame], Error?) in
                var out: [InboundFrame] = []
                do {
                    for try await frame in client.frames { out.append(frame) }
                    return (out, nil)
                } catch {
                    return (out, error)
                }
            }
            #expect(frames == [InboundFrame(messageID: 61, body: [1]), InboundFrame(messageID: 62, body: [])])
            if case .protocolError(let reason)? = failure as? AsyncClientError {
                #expect(reason.contains("-7"), "\(reason)")
            } else {
                Issue.record("the sequence ended with \(String(describing: failure)), not a protocol error")
            }
            await #expect(throws: AsyncClientError.closed) { try await client.send(messageID: 60, body: []) }
            await client.close()
        }

        @Test("cancelling a task waiting in next() throws CancellationError promptly", arguments: PollerKind.allCases)
        func cancellationWhileWaiting(poller: PollerKind) async throws {
            let fixture = try Fixture(poller: poller, router: MessageRouter<TCPConnection>())
            defer { fixture.tearDown() }
            let client = try await withTimeout(10) {
                try await AsyncFrameClient.connect(port: fixture.port, loop: fixture.group.ioLoops[0])
            }
            let waiter = Task { () -> Result<InboundFrame?, Error> in
                var iterator = client.frames.makeAsyncIterator()
                do { return .success(try await iterator.next()) } catch { return .failure(error) }
            }
            // Give the task a moment to park in next(); the outcome must be the same if it has not yet.
            try await Task.sleep(for: .milliseconds(50))
            let cancelledAt = SystemInfo.monotonicNanoseconds()
            waiter.cancel()
            let outcome = try await withTimeout(5) { await waiter.value }
            let latency = secondsSince(cancelledAt)
            switch outcome {
            case .failure(let error): #expect(error is CancellationError, "threw \(error)")
            case .success(let frame): Issue.record("next() returned \(String(describing: frame)) after cancel")
            }
            #expect(latency < 1.0, "took \(latency) s")

            // The client is still usable by a new consumer; a task cancelled before it asks throws at once.
            let early = Task { () -> Error? in
                withUnsafeCurrentTask { $0?.cancel() }
                var iterator = client.frames.makeAsyncIterator()
                do { _ = try await iterator.next(); return nil } catch { return error }
            }
            #expect(try await withTimeout(5) { await early.value } is CancellationError)
            await client.close()
        }

        @Test("connecting to a closed port throws", arguments: PollerKind.allCases)
        func connectRefused(poller: PollerKind) async throws {
            let group = try EventLoopGroup(ioLoops: 1, configuration: LoopConfiguration(poller: poller))
            defer { group.shutdown() }
            // A bound socket that does not listen: its port is ours and refuses connections.
            let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
            defer { close(fd) }
            var sin = sockaddr_in()
            sin.sin_family = sa_family_t(AF_INET)
            inet_pton(AF_INET, "127.0.0.1", &sin.sin_addr)
            var len = socklen_t(MemoryLayout<sockaddr_in>.size)
            let bound = withUnsafeMutablePointer(to: &sin) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, len) == 0 && getsockname(fd, $0, &len) == 0 }
            }
            #expect(bound)
            let port = Int(UInt16(bigEndian: sin.sin_port))
            let outcome = try await withTimeout(10) { () -> Result<Void, Error> in
                do {
                    let client = try await AsyncFrameClient.connect(port: port, loop: group.ioLoops[0])
                    await client.close()
                    return .success(())
                } catch {
                    return .failure(error)
                }
            }
            switch outcome {
            case .success: Issue.record("connect to a closed port succeeded")
            case .failure(let error):
                #expect((error as? IOError)?.errnoCode == ECONNREFUSED, "threw \(error)")
            }
        }

        @Test("backpressure: 2,000 pushed frames stay bounded in the buffer until consumed, then all arrive in order",
              arguments: PollerKind.allCases)
        func backpressure(poller: PollerKind) async throws {
            let total = 2000
            let bodySize = 100
            let router = MessageRouter<TCPConnection>()
            try router.on(TestID(50)) { message in
                for i in 0..<total {
                    var body = [UInt8](repeating: UInt8(truncatingIfNeeded: i), count: bodySize)
                    withUnsafeBytes(of: UInt32(i).littleEndian) { body.replaceSubrange(0..<4, with: $0) }
                    message.connection.sendFrame(messageID: 51, body: body)
                }
            }
            let fixture = try Fixture(poller: poller, router: router)
            defer { fixture.tearDown() }
            let capacity = 8
            let client = try await withTimeout(10) {
                try await AsyncFrameClient.connect(port: fixture.port, loop: fixture.group.ioLoops[0],
                                                   bufferCapacity: capacity)
            }
            // Capacity plus the frames of one read (the loop's scratch area) that were already in hand.
            let frameSize = 8 + bodySize
            let bound = capacity + LoopConfiguration().scratchBytes / frameSize + 1
            try await client.send(messageID: 50, body: [])
            #expect(await pollUntilAsync { client.bufferedFrames >= capacity })
            // Not consuming: the buffer stays bounded while the server has far more to give.
            var peak = 0
            let watchUntil = SystemInfo.monotonicNanoseconds() + 300_000_000
            while SystemInfo.monotonicNanoseconds() < watchUntil {
                peak = max(peak, client.bufferedFrames)
                try await Task.sleep(for: .milliseconds(2))
            }
            #expect(peak <= bound, "peak \(peak), bound \(bound)")
            #expect(peak < total)
            // Consume everything: all frames, in order, and the buffer never exceeds the bound meanwhile.
            let (seqs, peakWhileConsuming) = try await withTimeout(20) { () -> ([UInt32], Int) in
                var seqs: [UInt32] = []
                var peak = 0
                for try await frame in client.frames {
                    peak = max(peak, client.bufferedFrames)
                    #expect(frame.messageID == 51)
                    #expect(frame.body.count == bodySize)
                    seqs.append(frame.body.withUnsafeBytes { UInt32(littleEndian: $0.loadUnaligned(as: UInt32.self)) })
                    if seqs.count == total { break }
                }
                return (seqs, peak)
            }
            #expect(seqs == (0..<UInt32(total)).map { $0 })
            #expect(peakWhileConsuming <= bound, "peak \(peakWhileConsuming), bound \(bound)")
            #expect(client.bufferedFrames == 0)
            await client.close()
        }
    }
}
