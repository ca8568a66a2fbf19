import Messaging
import Reactor
import SwitchyardBench
import Testing
import TestSupport

extension MessagingSocketTests {
    @Suite("QPS tool", .serialized)
    struct QPSToolTests {
        @Test("runQPS against an in-process echo server for 1 s with 4 connections echoes messages",
              arguments: PollerKind.allCases)
        func smoke(poller: PollerKind) throws {
            try withGroup(poller: poller) { group in
                try withFramedServer(group: group, router: EchoBenchmark.makeEchoRouter()) { server, port in
                    let reports = Shared<[Int]>([])
                    let result = try EchoBenchmark.runQPS(
                        group: group, address: SocketAddress(ip: 0x7F00_0001, port: port),
                        options: EchoBenchmark.QPSOptions(connections: 4, seconds: 1, payloadSize: 64),
                        report: { second, count in reports.update { $0.append(second * 1_000_000_000 + count) } })
                    #expect(result.total > 0)
                    #expect(result.perSecond.count == 1)
                    #expect(result.perSecond == [result.total])
                    #expect(reports.get().count == 1)
                    #expect(result.seconds >= 0.99)
                    #expect(result.messagesPerSecond > 0)
                    #expect(server.statistics.protocolErrors == 0)
                    #expect(server.statistics.frames >= result.total)
                }
            }
        }
    }
}
