import EchoServer
import Dispatch
import Foundation
import Reactor
import Synchronization
import Testing
import TestSupport

#if canImport(Glibc)
import Glibc
#endif

@Suite("select and descriptors >= FD_SETSIZE", .serialized)
struct SelectLimitTests {
    @Test("the error names the descriptor, FD_SETSIZE and the way out")
    func errorTextIsClear() {
        let error = ReactorError.descriptorOutOfRangeForSelect(fd: 1500, limit: 1024)
        let text = error.description
        #expect(text.contains("1500"))
        #expect(text.contains("FD_SETSIZE"))
        #expect(text.contains("1024"))
        #expect(text.contains("epoll") && text.contains("poll"))
        #expect("\(error)" == text)
    }

    /// The scenario fills this process's descriptor table below 1024, so it runs in a child process of its own
    /// (an exit test): other suites running in parallel must not have their sockets pushed above FD_SETSIZE.
    @Test("a connection on a descriptor >= 1024: select refuses it clearly and keeps serving; epoll and poll serve it",
          arguments: PollerKind.allCases)
    func descriptorAboveSetSize(poller: PollerKind) async {
        await #expect(processExitsWith: .success) { [name = poller.rawValue as String] in
            try highDescriptorScenario(poller: PollerKind(rawValue: name)!)
        }
    }

    /// In a child process of its own, like the scenario above.
    @Test("select refusing 30 connections on descriptors >= 1024 logs one line for the episode, and one with the count")
    func refusalsLoggedOncePerEpisode() async {
        await #expect(processExitsWith: .success) {
            try refusalLogScenario()
        }
    }
}

/// Runs in the exit test's child process.
private func refusalLogScenario() throws {
    var limit = rlimit()
    getrlimit(__rlimit_resource_t(RLIMIT_NOFILE.rawValue), &limit)
    if limit.rlim_cur < 2048 && limit.rlim_max > limit.rlim_cur {
        limit.rlim_cur = min(2048, limit.rlim_max)
        setrlimit(__rlimit_resource_t(RLIMIT_NOFILE.rawValue), &limit)
        getrlimit(__rlimit_resource_t(RLIMIT_NOFILE.rawValue), &limit)
    }
    try #require(limit.rlim_cur >= 1200, "RLIMIT_NOFILE (hard \(limit.rlim_max)) too low to reach descriptor 1024")
    let lines = Shared<[CapturedLog]>([])
    let group = try EventLoopGroup(ioLoops: 1, configuration: LoopConfiguration(poller: .select))
    defer { group.shutdown() }
    let server = TCPServer(group: group, configuration: ServerConfiguration(port: 0),
                           callbacks: EchoService.callbacks(),
                           logger: CapturingLogHandler.logger(into: lines, level: .info))
    let port = try server.start().port
    defer { server.shutdown(timeout: .seconds(2)) }
    var fillers = try occupyDescriptorsBelow(1024)
    defer { for f in fillers { close(f) } }
    let refusedClients = try (0..<30).map { _ in try BlockingSocket(port: port, receiveTimeout: 10) }
    defer { for c in refusedClients { c.close() } }
    #expect(eventually { server.failedRegistrationCount == 30 })
    let refusing = lines.get().filter { $0.message.contains("refusing") }
    #expect(refusing.count == 1, "\(refusing.map(\.message))")
    // Descriptors free again: the next connection is served, which ends the episode with its count.
    for f in fillers { close(f) }
    fillers = []
    let served = try BlockingSocket(port: port, receiveTimeout: 10)
    defer { served.close() }
    #expect(try echoes(served, "served"))
    let ended = lines.get().filter { $0.metadata["refused.count"] != nil }
    #expect(ended.count == 1 && ended.first?.metadata["refused.count"] == "30", "\(ended)")
    #expect(lines.get().count <= 3, "\(lines.get().map(\.message))")  // listening, refusing, serving again
}

/// Opens /dev/null until the lowest free descriptor is 1024 or more; returns what it opened.
private func occupyDescriptorsBelow(_ limit: Int32) throws -> [Int32] {
    var fillers: [Int32] = []
    while true {
        let fd = open("/dev/null", O_RDONLY | O_CLOEXEC)
        if fd < 0 {
            let e = errno
            for f in fillers { close(f) }
            throw POSIXError(.init(rawValue: e)!)
        }
        if fd >= limit {
            close(fd)  // the next descriptor allocated is this one: the first at or above the limit
            return fillers
        }
        fillers.append(fd)
    }
}

private func echoes(_ socket: BlockingSocket, _ text: String) throws -> Bool {
    let bytes = Array(text.utf8)
    try socket.sendAll(bytes)
    return try socket.receive(exactly: bytes.count) == bytes
}

/// Runs in the exit test's child process.
private func highDescriptorScenario(poller: PollerKind) throws {
    let setSize: Int32 = 1024
    var limit = rlimit()
    getrlimit(__rlimit_resource_t(RLIMIT_NOFILE.rawValue), &limit)
    if limit.rlim_cur < 2048 && limit.rlim_max > limit.rlim_cur {
        limit.rlim_cur = min(2048, limit.rlim_max)
        setrlimit(__rlimit_resource_t(RLIMIT_NOFILE.rawValue), &limit)
        getrlimit(__rlimit_resource_t(RLIMIT_NOFILE.rawValue), &limit)
    }
    try #require(limit.rlim_cur >= 1100, "RLIMIT_NOFILE (hard \(limit.rlim_max)) too low to reach descriptor 1024")

    let connects = EventCounter()
    let closes = EventCounter()
    let group = try EventLoopGroup(ioLoops: 1, configuration: LoopConfiguration(poller: poller))
    defer { group.shutdown() }
    let server = TCPServer(
        group: group, configuration: ServerConfiguration(port: 0),
        callbacks: EchoService.callbacks(onConnect: { _ in connects.signal() }, onClose: { _ in closes.signal() }))
    let port = try server.start().port
    defer { server.shutdown(timeout: .seconds(2)) }

    // A client served before the squeeze; it must stay served throughout.
    let early = try BlockingSocket(port: port)
    defer { early.close() }
    early.setReceiveTimeout(seconds: 10)
    #expect(connects.wait(for: 1))
    #expect(try echoes(early, "before"))

    // A listener nobody accepts from, for the client-side check below (keeps the server's counts apart).
    let (sink, sinkPort) = try boundLoopbackSocket(listenBacklog: 16)
    defer { close(sink) }

    var fillers = try occupyDescriptorsBelow(setSize)
    defer { for f in fillers { close(f) } }
    // The client's socket and the one the server accepts for it both land at 1024 or above.
    let high = try BlockingSocket(port: port)
    defer { high.close() }
    high.setReceiveTimeout(seconds: 10)
    #expect(high.fd >= setSize)

    // A loop created now gets a wake-up descriptor >= 1024. select cannot watch it: the init throws a clear
    // error and releases what it opened exactly once (a second close of a reused number would stop the process).
    do {
        let loop = try EventLoop(configuration: LoopConfiguration(poller: poller))
        #expect(poller != .select, "a select loop accepted a wake-up descriptor >= FD_SETSIZE")
        _ = loop
    } catch ReactorError.descriptorOutOfRangeForSelect(let fd, let limit) {
        #expect(poller == .select)
        #expect(fd >= setSize && limit == setSize)
    }
    if poller == .select {
        // Refused: the accepted descriptor is closed at once; no hooks fire for it.
        var sawEnd = false
        do {
            sawEnd = try high.receiveUntilClose().isEmpty
        } catch let e as POSIXError where e.code == .ECONNRESET {
            sawEnd = true
        }
        #expect(sawEnd, "select should have closed the connection on a descriptor >= FD_SETSIZE")
        #expect(eventually { server.failedRegistrationCount == 1 })
        #expect(eventually { server.connectionCount == 1 })
        // The refused connection was counted on the loop when placed and uncounted when it was closed.
        #expect(eventually { group.ioLoops[0].serverConnectionCount == 1 })
        #expect(connects.count == 1)
        #expect(closes.count == 0)

        // A select-based client cannot use such a descriptor either: its connect fails with the same error.
        let failure = Shared<Error?>(nil)
        let failed = EventCounter()
        let client = try TCPClient(
            loop: group.ioLoops[0], configuration: ClientConfiguration(port: Int(sinkPort), reconnect: false),
            callbacks: ConnectionCallbacks(),
            onConnectFailed: { e in
                failure.set(e)
                failed.signal()
            })
        client.connect()
        #expect(failed.wait(for: 1))
        if case .descriptorOutOfRangeForSelect(let fd, let limit)? = failure.get() as? ReactorError {
            #expect(fd >= setSize)
            #expect(limit == setSize)
        } else {
            Issue.record("expected descriptorOutOfRangeForSelect, got \(String(describing: failure.get()))")
        }
    } else {
        // epoll and poll have no such limit.
        #expect(connects.wait(for: 2))
        #expect(try echoes(high, "high"))
        #expect(server.failedRegistrationCount == 0)
    }

    // The loop kept serving the others.
    #expect(try echoes(early, "during"))

    // With descriptors below 1024 free again, a newcomer is served.
    for f in fillers { close(f) }
    fillers = []
    let later = try BlockingSocket(port: port)
    defer { later.close() }
    later.setReceiveTimeout(seconds: 10)
    #expect(later.fd < setSize)
    #expect(try echoes(later, "after"))
    #expect(server.failedRegistrationCount == (poller == .select ? 1 : 0))
}
