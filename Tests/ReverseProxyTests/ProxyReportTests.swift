import Foundation
import Reactor
import ReverseProxy
import TestSupport
import Testing

// In the `.serialized` suite of ProxySocketTests: never beside its descriptor-hungry tests.
extension ProxySocketTests {
    @Test("connections that end together: each outcome reaches the agent once, their reports share system calls",
          arguments: PollerKind.allCases)
    func reportsOfConnectionsEndingTogether(poller: PollerKind) async throws {
        let fleet = try await ProxyFleet.start(poller: poller, backends: [.echo]) {
            $0.drainTimeout = .milliseconds(300)
        }
        let before = try #require(await fleet.agent.statistics())
        let count = 40
        // Each connection answered (a byte there and back), then held open.
        var clients: [BlockingSocket] = []
        for i in 0..<count {
            let socket = try BlockingSocket(port: fleet.proxyPort, receiveTimeout: 10)
            try socket.sendAll([UInt8(i)])
            #expect(try socket.receive(exactly: 1) == [UInt8(i)])
            clients.append(socket)
        }
        let served = fleet.proxy.statistics
        #expect(served.reportedSuccesses == 0 && served.reportBatches == 0)
        // The drain timeout closes them all at once: one task per loop ends every tunnel of that loop.
        await onThread { fleet.proxy.shutdown() }
        for client in clients { client.close() }
        let arrived = await eventually(timeout: .seconds(10)) {
            await fleet.agent.statistics()?.reportRequests == before.reportRequests + count
        }
        #expect(arrived, "the agent did not count \(count) reports")
        let s = fleet.proxy.statistics
        #expect(s.reportedSuccesses == count && s.reportedFailures == 0)
        #expect(s.reportsDropped == 0)
        // At most two system calls per loop (the iteration that ended them, the close of the agent client).
        #expect(s.reportBatches >= 1 && s.reportBatches <= 2 * fleet.proxyGroup.ioLoops.count, "\(s)")
        // One GetHost per connection, as the agent counts them (spares asked ahead included).
        let after = try #require(await fleet.agent.statistics())
        let asked = after.getHostRequests - before.getHostRequests
        let spares = fleet.proxy.configuration.spareHosts * fleet.proxyGroup.ioLoops.count
        #expect(asked >= count && asked <= count + 2 * spares, "\(asked) GetHosts for \(count) connections")
        await fleet.stop()
    }
}
