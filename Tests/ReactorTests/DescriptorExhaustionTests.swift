import Dispatch
import Foundation
import Reactor
import Synchronization
import Testing
import TestSupport

#if canImport(Glibc)
import Glibc
#endif

/// What became of a client of a server that is out of descriptors.
private enum Fate: Equatable {
    case served    // its byte came back
    case refused   // EOF or reset
    case unknown   // nothing within the deadline
}

/// Sends one byte on every socket and waits (bounded) until each is echoed or ended.
private func fates(of sockets: [BlockingSocket], timeout: Double = 20) -> [Fate] {
    var result = Array(repeating: Fate.unknown, count: sockets.count)
    for s in sockets { try? s.sendAll([0x78]) }  // a refused one may already be reset: that shows below
    var pfds = sockets.map { pollfd(fd: $0.fd, events: Int16(POLLIN), revents: 0) }
    var pending = sockets.count
    let deadline = Date().addingTimeInterval(timeout)
    var byte: UInt8 = 0
    while pending > 0 && Date() < deadline {
        if poll(&pfds, nfds_t(pfds.count), 200) <= 0 { continue }
        for i in pfds.indices where pfds[i].fd >= 0 && pfds[i].revents != 0 {
            let n = recv(pfds[i].fd, &byte, 1, Int32(MSG_DONTWAIT))
            if n < 0 && (errno == EAGAIN || errno == EINTR) { continue }
            result[i] = n == 1 && byte == 0x78 ? .served : .refused
            pfds[i].fd = -1
            pending -= 1
        }
    }
    return result
}

/// Opens `count` clients to `port` and reports whether every one of them is echoed.
private func allServed(count: Int, port: UInt16) -> Bool {
    var sockets: [BlockingSocket] = []
    defer { for s in sockets { s.close() } }
    for _ in 0..<count {
        guard let s = try? BlockingSocket(port: port) else { return false }
        sockets.append(s)
    }
    return fates(of: sockets, timeout: 5).allSatisfy { $0 == .served }
}

@Suite("Out of descriptors (EMFILE)", .serialized)
struct DescriptorExhaustionTests {
    @Test("with RLIMIT_NOFILE 64, 120 clients neither crash nor spin the server; it accepts again when they go",
          arguments: PollerKind.allCases)
    func emfileDoesNotSpin(poller: PollerKind) throws {
        let child = try ChildServer(
            arguments: ["--port", "0", "--threads", "1", "--poller", poller.rawValue, "--log-level", "error"],
            fileLimit: 64)
        defer { _ = child.stop(within: 5) }
        let port = child.port

        // More clients than the server has descriptors: the kernel completes every handshake (backlog 1024).
        let total = 120
        var clients: [BlockingSocket] = []
        defer { for c in clients { c.close() } }
        for _ in 0..<total { clients.append(try BlockingSocket(port: port)) }
        let outcome = fates(of: clients)
        let served = outcome.filter { $0 == .served }.count
        let refused = outcome.filter { $0 == .refused }.count
        // Every client learns its fate: the server is neither stuck nor silently holding connections.
        #expect(served + refused == total, "clients left hanging: \(total - served - refused)")
        #expect(served > 0)
        #expect(served < 64, "more connections served than the descriptor limit allows?")
        #expect(refused > 0, "no connection was refused: the descriptor limit was not reached")

        // At the limit, with clients still connecting and being turned away, the server stays quiet: a loop
        // spinning on a readable listener would burn ~30 ticks in this window.
        let cpuBefore = processCPUTicks(pid: child.pid)
        var latecomers: [BlockingSocket] = []
        for _ in 0..<10 {
            if let s = try? BlockingSocket(port: port) { latecomers.append(s) }
        }
        usleep(300_000)  // the observation window
        let cpuAfter = processCPUTicks(pid: child.pid)
        #expect(cpuBefore >= 0 && cpuAfter >= 0)
        #expect(cpuAfter - cpuBefore <= 3, "the server used \(cpuAfter - cpuBefore) ticks in 300 ms at its limit")
        #expect(fates(of: latecomers, timeout: 10).allSatisfy { $0 == .refused })
        for s in latecomers { s.close() }
        #expect(child.process.isRunning)

        // The served ones are still served.
        let servedClients = zip(clients, outcome).filter { $0.1 == .served }.map(\.0)
        #expect(fates(of: servedClients).allSatisfy { $0 == .served })

        // Everyone leaves: the server accepts again, as many as before (no descriptor leaked).
        for c in clients { c.close() }
        clients = []
        #expect(eventually(timeout: 15) { allServed(count: served, port: port) },
                "after the clients left, the server did not serve \(served) connections again")

        // And it idles at zero CPU, stays up, and exits 0 on SIGTERM.
        let idleBefore = processCPUTicks(pid: child.pid)
        usleep(300_000)
        #expect(processCPUTicks(pid: child.pid) - idleBefore <= 2)
        #expect(child.process.isRunning)
        #expect(child.stop(within: 10) == 0)
        #expect(child.process.terminationReason == .exit)
    }
}
