import Foundation
import Testing
import TestSupport
@testable import Reactor

#if canImport(Glibc)
import Glibc
#endif

@Suite("TCPListener: raw accepted sockets")
struct ListenerTests {
    @Test("with noDelay the accepted sockets have TCP_NODELAY already (inherited from the listener), else not",
          arguments: PollerKind.allCases, [true, false])
    func acceptedSocketsInheritNoDelay(poller: PollerKind, noDelay: Bool) throws {
        try withGroup(poller: poller) { group in
            let seen = Shared<[Int32]>([])
            let listener = TCPListener(group: group, host: "127.0.0.1", port: 0, noDelay: noDelay) { socket in
                var value: Int32 = -1
                var len = socklen_t(MemoryLayout<Int32>.size)
                getsockopt(socket.fd, Int32(IPPROTO_TCP), TCP_NODELAY, &value, &len)
                seen.update { $0.append(value) }
                Posix.close(socket.fd)
            }
            let address = try listener.start()
            defer { listener.stop() }
            // Several connections: the kernel spreads them over the loops' listening sockets (SO_REUSEPORT).
            let clients = try (0..<6).map { _ in try BlockingSocket(port: address.port, receiveTimeout: 10) }
            #expect(eventually { seen.get().count == clients.count })
            #expect(seen.get().allSatisfy { ($0 != 0) == noDelay }, "\(seen.get())")
            for client in clients { client.close() }
        }
    }
}
