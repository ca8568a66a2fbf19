import Foundation
import LarsProtocol
import LoadBalancing
import Messaging
@testable import NameService
import Reactor
import RouteStore
import Storage
import SwiftProtobuf
import RouteTestSupport
import Testing
import TestSupport

#if canImport(Glibc)
import Glibc
#endif

/// A blocking TCP socket from a chosen source address (any of 127.0.0.0/8), speaking raw Lars frames: a second
/// "machine" for the per-source limits.
final class RawFrameSocket: @unchecked Sendable {
    // @unchecked Sendable: used by one thread at a time (the test hands it to `onThread` and waits).
    let fd: Int32

    init(port: Int, from source: String) throws {
        fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        var tv = timeval(tv_sec: 10, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        func address(_ ip: String, _ port: Int) -> sockaddr_in {
            var sin = sockaddr_in()
            sin.sin_family = sa_family_t(AF_INET)
            sin.sin_port = UInt16(port).bigEndian
            inet_pton(AF_INET, ip, &sin.sin_addr)
            return sin
        }
        var local = address(source, 0)
        var remote = address("127.0.0.1", port)
        let size = socklen_t(MemoryLayout<sockaddr_in>.size)
        let bound = withUnsafePointer(to: &local) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, size) }
        }
        let connected = withUnsafePointer(to: &remote) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, size) }
        }
        guard bound == 0, connected == 0 else {
            close(fd)
            throw POSIXError(.init(rawValue: errno) ?? .EIO)
        }
    }

    deinit { close(fd) }

    func send(id: MessageID, _ message: some SwiftProtobuf.Message) throws {
        let body: [UInt8] = try message.serializedBytes()
        var frame = withUnsafeBytes(of: id.rawValue.littleEndian) { Array($0) }
        frame += withUnsafeBytes(of: Int32(body.count).littleEndian) { Array($0) }
        frame += body
        var sent = 0
        while sent < frame.count {
            let n = frame[sent...].withUnsafeBytes { Glibc.send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
            guard n > 0 else { throw POSIXError(.EPIPE) }
            sent += n
        }
    }

    private func readExactly(_ count: Int) -> [UInt8]? {
        var out = [UInt8](repeating: 0, count: count)
        var got = 0
        while got < count {
            let n = out[got...].withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
            if n < 0 && errno == EINTR { continue }
            guard n > 0 else { return nil }
            got += n
        }
        return out
    }

    /// The next frame, or nil on timeout or close.
    func receive() -> (id: Int32, body: [UInt8])? {
        guard let header = readExactly(8) else { return nil }
        let id = header[0..<4].withUnsafeBytes { Int32(littleEndian: $0.loadUnaligned(as: Int32.self)) }
        let length = header[4..<8].withUnsafeBytes { Int32(littleEndian: $0.loadUnaligned(as: Int32.self)) }
        guard let body = readExactly(Int(length)) else { return nil }
        return (id, body)
    }

    /// Sends every request, then reads as many RegisterHostResponses (pipelined, as a flood would).
    func register(_ requests: [Switchyard_Lb_RegisterHostRequest]) throws -> [Switchyard_Lb_RegisterHostResponse] {
        for request in requests { try send(id: .registerHostRequest, request) }
        var replies: [Switchyard_Lb_RegisterHostResponse] = []
        while replies.count < requests.count, let frame = receive() {
            if frame.id == MessageID.registerHostResponse.rawValue {
                replies.append(try Switchyard_Lb_RegisterHostResponse(serializedBytes: frame.body))
            }
        }
        return replies
    }
}

func registration(_ key: RouteKey, ip: UInt32, port: Int32, ttlMs: UInt32 = 60_000)
    -> Switchyard_Lb_RegisterHostRequest
{
    var request = Switchyard_Lb_RegisterHostRequest()
    request.modid = key.modid
    request.cmdid = key.cmdid
    request.ip = Int32(bitPattern: ip)
    request.port = port
    request.ttlMs = ttlMs
    return request
}

extension NameServiceSocketTests {
    @Suite("Name service hardening")
    struct HardeningTests {
        @Test("registrations past the per-source limit are refused (logged once); another source still registers")
        func perSourceLimit() async throws {
            let pool = try await makePool(TestDatabase.sqliteFile.url())
            let recorder = LogRecorder()
            let running = try await RunningNameService(pool: pool, logger: recorder.logger) {
                $0.maxRegistrationsPerSource = 50
            }
            let key = RouteKey(modid: uniqueModid(), cmdid: 1)
            let port = running.port
            let flood = (0..<200).map { registration(key, ip: 0x0A05_0000 + UInt32($0), port: 80) }
            let floodReplies = try await onThread { Result { try RawFrameSocket(port: port, from: "127.0.0.1")
                .register(flood) } }.get()
            #expect(floodReplies.count == 200)
            #expect(floodReplies.filter(\.ok).count == 50)
            #expect(floodReplies.filter { $0.reason.contains("this source holds its limit of 50") }.count == 150)
            // Another machine registers while the first one is at its limit.
            let other = (0..<10).map { registration(key, ip: 0x0A06_0000 + UInt32($0), port: 80) }
            let otherReplies = try await onThread { Result { try RawFrameSocket(port: port, from: "127.0.0.2")
                .register(other) } }.get()
            #expect(otherReplies.count == 10 && otherReplies.allSatisfy(\.ok))
            // GetRoute answers with both sources' hosts.
            let client = try await running.client()
            try await askRoute(client, key)
            let reply = try #require(try await nextFrame(client) {
                $0.messageID == MessageID.getRouteResponse.rawValue
            })
            #expect(try routeHosts(reply).count == 60)
            #expect(running.service.statistics.registrations == 60)
            #expect(running.service.statistics.registrationsRefused == 150)
            #expect(recorder.count(containing: "registrations refused") == 1, "one line per episode")
            await client.close()
            await running.stop()
            await pool.close()
        }

        @Test("connections at their subscription limit log one line per episode; after the quiet interval a new one")
        func subscriptionLimitOncePerEpisode() async throws {
            let pool = try await makePool(TestDatabase.sqliteFile.url())
            let recorder = LogRecorder()
            let group = try EventLoopGroup(ioLoops: 1)
            let service = NameService(
                group: group, configuration: NameServiceConfiguration(port: 0, maxSubscriptionsPerConnection: 2),
                pool: pool, logger: recorder.logger, logQuietInterval: .seconds(1))
            let port = Int(try service.start().port)
            let task = Task { try await service.run() }
            let modid = uniqueModid()
            // Three routes from each connection: the third is past its limit of two (answered, not subscribed).
            func ask(_ client: AsyncFrameClient, _ cmdids: ClosedRange<Int32>) async throws {
                for cmdid in cmdids { try await askRoute(client, RouteKey(modid: modid, cmdid: cmdid)) }
            }
            func answered(_ client: AsyncFrameClient, _ count: Int) async throws {
                for _ in 0..<count {
                    #expect(try await nextFrame(client) { $0.messageID == MessageID.getRouteResponse.rawValue } != nil)
                }
            }
            var clients: [AsyncFrameClient] = []
            for _ in 0..<12 {
                let client = try await AsyncFrameClient.connect(port: port, loop: group.next())
                clients.append(client)
                try await ask(client, 1...2)
                try await answered(client, 2)
            }
            // The burst: every connection asks its third route at once.
            for client in clients { try await ask(client, 3...3) }
            for client in clients { try await answered(client, 1) }
            let limitLines = "at its subscription limit: further routes"
            #expect(recorder.count(containing: limitLines) == 1, "one line for the burst of 12 connections")
            #expect(service.statistics.subscriptions == 24)
            // The quiet interval passes (time, not an event: nothing to await), then a new episode.
            try await Task.sleep(for: .milliseconds(1300))
            let late = try await AsyncFrameClient.connect(port: port, loop: group.next())
            clients.append(late)
            try await ask(late, 1...3)
            try await answered(late, 3)
            #expect(recorder.count(containing: limitLines) == 2)
            let ended = recorder.lines.get().filter { $0.message.contains("subscription limit: episode over") }
            #expect(ended.count == 1 && ended.first?.metadata["count"] == "12", "\(ended)")
            for client in clients { await client.close() }
            task.cancel()
            _ = await task.result
            await onThread { group.shutdown() }
            await pool.close()
        }

        @Test("a route with 8,000 hosts is answered with as many as fit in a Lars frame; logged once")
        func frameCap() async throws {
            let pool = try await makePool(TestDatabase.sqliteFile.url())
            let key = RouteKey(modid: uniqueModid(), cmdid: 8)
            for chunk in stride(from: 0, to: 8000, by: 200) {
                var sql = "INSERT INTO RouteData (modid, cmdid, serverip, serverport) VALUES "
                var values: [SQLValue] = []
                for i in chunk..<chunk + 200 {
                    sql += i == chunk ? "(?, ?, ?, ?)" : ", (?, ?, ?, ?)"
                    values += [.integer(Int64(key.modid)), .integer(Int64(key.cmdid)),
                               .integer(Int64(0x0A00_0000 + i)), .integer(9000)]
                }
                _ = try await pool.query(sql, values)
            }
            let recorder = LogRecorder()
            let running = try await RunningNameService(pool: pool, logger: recorder.logger)
            #expect(await eventually { running.service.snapshot.hosts(for: key).count == 8000 })
            let client = try await running.client()
            for _ in 0..<2 {
                try await askRoute(client, key)
                let frame = try #require(try await nextFrame(client) {
                    $0.messageID == MessageID.getRouteResponse.rawValue
                })
                let hosts = try routeHosts(frame)
                #expect(hosts.count > 4000 && hosts.count < 8000, "\(hosts.count)")
                #expect(frame.body.count <= LarsFrameLimit.maxBody, "\(frame.body.count) bytes")
            }
            try await running.service.reload()
            #expect(recorder.count(containing: "more hosts than fit in one Lars frame") == 1)
            #expect(running.service.statistics.routesTruncated == 1)
            await client.close()
            await running.stop()
            await pool.close()
        }
    }
}
