import Foundation
import Testing
import TestSupport
@testable import Reactor

#if canImport(Glibc)
import Glibc
#endif

/// A blocking listening socket on 127.0.0.1, port 0: (descriptor, port).
private func listener(backlog: Int32 = 16) throws -> (Int32, Int) {
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    var sin = sockaddr_in()
    sin.sin_family = sa_family_t(AF_INET)
    inet_pton(AF_INET, "127.0.0.1", &sin.sin_addr)
    var size = socklen_t(MemoryLayout<sockaddr_in>.size)
    let bound = withUnsafeMutablePointer(to: &sin) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, size) == 0 && getsockname(fd, $0, &size) == 0 }
    }
    guard bound, listen(fd, backlog) == 0 else { throw TestFailure("cannot listen: errno \(errno)") }
    var timeout = timeval(tv_sec: 10, tv_usec: 0)
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
    return (fd, Int(UInt16(bigEndian: sin.sin_port)))
}

/// Accepts one connection (blocking, within the listener's timeout), with a receive timeout of its own.
private func acceptOne(_ listener: Int32) throws -> Int32 {
    let fd = accept(listener, nil, nil)
    guard fd >= 0 else { throw TestFailure("nothing connected: errno \(errno)") }
    var timeout = timeval(tv_sec: 10, tv_usec: 0)
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
    return fd
}

/// A connected loopback pair: (the test's blocking end, the tunnel's end, accepted as the reactor accepts:
/// non-blocking, CLOEXEC).
private func clientPair(_ listenerFD: Int32, port: Int) throws -> (Int32, Int32) {
    let outer = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    var sin = sockaddr_in()
    sin.sin_family = sa_family_t(AF_INET)
    sin.sin_port = UInt16(port).bigEndian
    inet_pton(AF_INET, "127.0.0.1", &sin.sin_addr)
    let connected = withUnsafePointer(to: &sin) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
            connect(outer, $0, socklen_t(MemoryLayout<sockaddr_in>.size))
        }
    }
    guard connected == 0 else { throw TestFailure("connect failed: errno \(errno)") }
    let inner = accept(listenerFD, nil, nil)
    guard inner >= 0 else { throw TestFailure("accept failed: errno \(errno)") }
    _ = fcntl(inner, F_SETFL, fcntl(inner, F_GETFL) | O_NONBLOCK)
    _ = fcntl(inner, F_SETFD, FD_CLOEXEC)
    var timeout = timeval(tv_sec: 10, tv_usec: 0)
    setsockopt(outer, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
    return (outer, inner)
}

private func receive(_ fd: Int32, _ count: Int) -> [UInt8] {
    var buffer = [UInt8](repeating: 0, count: count)
    let n = recv(fd, &buffer, count, Int32(MSG_WAITALL))
    return n > 0 ? Array(buffer[0..<n]) : []
}

/// True when the peer closed (EOF or reset) within the receive timeout, with nothing sent first.
private func seesEnd(_ fd: Int32) -> Bool {
    var byte: UInt8 = 0
    let n = recv(fd, &byte, 1, 0)
    return n == 0 || (n < 0 && errno == ECONNRESET)
}

/// A request from the client to the backend and an answer back through the tunnel, then the FINs each way.
private func exchange(client: Int32, backend: Int32, _ tag: String) {
    let request = Array("ping \(tag)".utf8)
    #expect(send(client, request, request.count, 0) == request.count)
    #expect(receive(backend, request.count) == request)
    let answer = Array("pong \(tag)".utf8)
    #expect(send(backend, answer, answer.count, 0) == answer.count)
    #expect(receive(client, answer.count) == answer)
    shutdown(client, Int32(SHUT_WR))
    #expect(seesEnd(backend))
    shutdown(backend, Int32(SHUT_WR))
    #expect(seesEnd(client))
}

/// Dials `address` on `loop` and joins the connected socket and `clientInner` in a tunnel: `connected` is set when the
/// dial succeeds, `outcome` when the tunnel ends, `failure` when the dial or the tunnel's start fails.
private func dialIntoTunnel(_ loop: EventLoop, to address: SocketAddress, client clientInner: Int32,
                            timeout: Duration, outcome: Shared<TunnelOutcome?>, failure: Shared<String?>,
                            connected: Shared<Bool>? = nil) throws {
    _ = try onLoop(loop) {
        TCPDialer.dial(on: loop, to: address, timeout: timeout) { result in
            switch result {
            case .success(let socket):
                connected?.set(true)
                let client = AcceptedSocket(fd: clientInner, peer: address, loop: loop)
                let tunnel = TCPTunnel(loop: loop, client: client, server: socket,
                                       onEnd: { _, end in outcome.set(end) })
                do { try tunnel.start() } catch { failure.set("start: \(error)") }
            case .failure(let error):
                failure.set("dial: \(error)")
                close(clientInner)
            }
        }
        return true
    }
}

/// A one-loop group on `poller` and a backend listening on 127.0.0.1: `body` gets the loop, the listener and its
/// address.
private func withBackend(_ poller: PollerKind, _ body: (EventLoop, Int32, SocketAddress) throws -> Void) throws {
    try withGroup(poller: poller, ioLoops: 1) { group in
        let (fd, port) = try listener()
        defer { close(fd) }
        try body(group.next(), fd, try SocketAddress(host: "127.0.0.1", port: port))
    }
}

@Suite("TCPDialer.dial: a connected socket handed to a tunnel still watched, or closed")
struct DialedTunnelTests {
    @Test("a tunnel to a dialed socket moves bytes both ways and ends on the FINs; again on the same loop",
          arguments: PollerKind.allCases)
    func tunnelToDialedSocket(poller: PollerKind) throws {
        try withBackend(poller) { loop, backendListener, address in
            let (clientListener, clientPort) = try listener()
            defer { close(clientListener) }
            // Twice: the second tunnel's descriptors may reuse the first one's numbers, which must be free in the
            // poller as well as in the process.
            for round in 0..<2 {
                let (client, clientInner) = try clientPair(clientListener, port: clientPort)
                defer { close(client) }
                let outcome = Shared<TunnelOutcome?>(nil)
                let failure = Shared<String?>(nil)
                try dialIntoTunnel(loop, to: address, client: clientInner, timeout: .seconds(5), outcome: outcome,
                                   failure: failure)
                let backend = try acceptOne(backendListener)
                defer { close(backend) }
                exchange(client: client, backend: backend, "\(round)")
                #expect(eventually { outcome.get() != nil })
                let bytes = UInt64("ping \(round)".utf8.count)
                #expect(outcome.get() == TunnelOutcome(end: .finished, clientToServerBytes: bytes,
                                                       serverToClientBytes: bytes))
                #expect(failure.get() == nil)
            }
        }
    }

    @Test("a dialed socket closed, or dropped unclaimed, closes its connection; the loop dials on",
          arguments: PollerKind.allCases)
    func closedOrDropped(poller: PollerKind) throws {
        try withBackend(poller) { loop, backendListener, address in
            for closes in [true, false, true] {
                let connected = Shared<Bool?>(nil)
                _ = try onLoop(loop) {
                    TCPDialer.dial(on: loop, to: address, timeout: .seconds(5)) { result in
                        guard case .success(let socket) = result else { return connected.set(false) }
                        if closes {
                            socket.close()
                            socket.close()  // once only
                        }  // else: dropped here, unclaimed
                        connected.set(true)
                    }
                    return true
                }
                let backend = try acceptOne(backendListener)
                defer { close(backend) }
                #expect(seesEnd(backend), "closes: \(closes)")
                #expect(eventually { connected.get() != nil })
                #expect(connected.get() == true)
            }
        }
    }

    @Test("a tunnel whose dialed socket was closed before start() fails to start and closes the client",
          arguments: PollerKind.allCases)
    func closedBeforeStart(poller: PollerKind) throws {
        try withBackend(poller) { loop, backendListener, address in
            let (clientListener, clientPort) = try listener()
            defer { close(clientListener) }
            let (client, clientInner) = try clientPair(clientListener, port: clientPort)
            defer { close(client) }
            let failure = Shared<String?>(nil)
            _ = try onLoop(loop) {
                TCPDialer.dial(on: loop, to: address, timeout: .seconds(5)) { result in
                    guard case .success(let socket) = result else { return failure.set("dial failed") }
                    let tunnel = TCPTunnel(loop: loop, client: AcceptedSocket(fd: clientInner, peer: address, loop: loop),
                                           server: socket, onEnd: { _, _ in failure.set("onEnd ran") })
                    socket.close()
                    do {
                        try tunnel.start()
                        failure.set("started")
                    } catch {
                        failure.set("refused")
                    }
                }
                return true
            }
            let backend = try acceptOne(backendListener)
            defer { close(backend) }
            #expect(seesEnd(backend))
            #expect(seesEnd(client))
            #expect(eventually { failure.get() != nil })
            #expect(failure.get() == "refused")
        }
    }

    @Test("a dialed socket not claimed yet does not keep the loop awake (its write interest is dropped)",
          arguments: PollerKind.allCases)
    func unclaimedSocketIsQuiet(poller: PollerKind) throws {
        try withBackend(poller) { loop, backendListener, address in
            let held = Shared<DialedSocket?>(nil)
            let iterations = Shared<(UInt64, UInt64)?>(nil)
            _ = try onLoop(loop) {
                TCPDialer.dial(on: loop, to: address, timeout: .seconds(5)) { result in
                    guard case .success(let socket) = result else { return }
                    held.set(socket)  // kept, unclaimed, across the loop's next iterations
                    let start = loop.iterations
                    loop.schedule(after: .milliseconds(50)) { iterations.set((start, loop.iterations)) }
                }
                return true
            }
            let backend = try acceptOne(backendListener)
            defer { close(backend) }
            #expect(eventually { iterations.get() != nil })
            let (start, end) = try #require(iterations.get())
            // Level-triggered writability would wake it on every wait: thousands of iterations in 50 ms.
            #expect(end - start < 50, "\(end - start) iterations in 50 ms")
            _ = try onLoop(loop) { held.get()?.close() }
            #expect(seesEnd(backend))
        }
    }

    @Test("a connect answered late (the backend's accept queue full at first) completes on its event; the tunnel works",
          arguments: PollerKind.allCases)
    func lateConnect(poller: PollerKind) throws {
        try withGroup(poller: poller, ioLoops: 1) { group in
            let loop = group.next()
            let (backendListener, port) = try listener(backlog: 1)
            defer { close(backendListener) }
            let address = try SocketAddress(host: "127.0.0.1", port: port)
            // Fill the accept queue: connects complete at once until it is full, then the kernel drops the SYN.
            var queued: [Int32] = []
            defer { for fd in queued { close(fd) } }
            var full = false
            for _ in 0..<8 where !full {
                let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_NONBLOCK.rawValue), 0)
                var sin = sockaddr_in()
                sin.sin_family = sa_family_t(AF_INET)
                sin.sin_port = UInt16(port).bigEndian
                inet_pton(AF_INET, "127.0.0.1", &sin.sin_addr)
                _ = withUnsafePointer(to: &sin) {
                    $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                        connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size))
                    }
                }
                var pfd = pollfd(fd: fd, events: Int16(POLLOUT), revents: 0)
                if poll(&pfd, 1, 0) == 1 && pfd.revents & Int16(POLLOUT) != 0 {
                    queued.append(fd)
                } else {
                    close(fd)
                    full = true
                }
            }
            try #require(full, "the accept queue never filled")
            let (clientListener, clientPort) = try listener()
            defer { close(clientListener) }
            let (client, clientInner) = try clientPair(clientListener, port: clientPort)
            defer { close(client) }
            let outcome = Shared<TunnelOutcome?>(nil)
            let failure = Shared<String?>(nil)
            let connected = Shared(false)
            try dialIntoTunnel(loop, to: address, client: clientInner, timeout: .seconds(10), outcome: outcome,
                               failure: failure, connected: connected)
            Thread.sleep(forTimeInterval: 0.2)
            #expect(!connected.get(), "the connect completed while the backend's queue was full")
            // Room again: the SYN's retransmission (about 1 s after the first) gets through.
            for _ in queued { close(try acceptOne(backendListener)) }
            let backend = try acceptOne(backendListener)
            defer { close(backend) }
            #expect(eventually(timeout: 10) { connected.get() })
            exchange(client: client, backend: backend, "late")
            #expect(eventually { outcome.get() != nil })
            #expect(failure.get() == nil)
        }
    }

    @Test("a dial cancelled before its immediate result is handed over: no completion, its descriptor closed once",
          arguments: PollerKind.allCases)
    func cancelBeforeImmediateResult(poller: PollerKind) throws {
        try withBackend(poller) { loop, backendListener, address in
            let completed = Shared(false)
            let newcomer = Shared<Int32>(-1)
            _ = try onLoop(loop) {
                let dialer = TCPDialer.dial(on: loop, to: address, timeout: .seconds(5)) { _ in completed.set(true) }
                dialer.cancel()
                // The lowest free number: the one the cancel just closed. It must survive the posted result.
                newcomer.set(socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0))
                return true
            }
            // Tasks posted before this one have run once it runs.
            _ = try onLoop(loop) { true }
            let fd = newcomer.get()
            #expect(fd >= 0)
            #expect(fcntl(fd, F_GETFD) != -1, "the descriptor \(fd) opened after the cancel was closed")
            #expect(!completed.get())
            close(fd)
            // The backend saw the connect and its close.
            let backend = try acceptOne(backendListener)
            defer { close(backend) }
            #expect(seesEnd(backend))
        }
    }
}
