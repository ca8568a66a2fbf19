import EchoServer
import Dispatch
import Reactor
import Synchronization
import Testing
import TestSupport

#if canImport(Glibc)
import Glibc
#endif

/// Where the server put each open connection: the count per I/O loop index.
private func connectionsPerLoop(_ server: TCPServer) -> [Int: Int] {
    var counts: [Int: Int] = [:]
    for id in server.connectionIDs {
        if let c = server.connection(id: id) { counts[c.loop.index, default: 0] += 1 }
    }
    return counts
}

/// An echo server on a fresh group with `placement`, torn down when `body` returns.
private func withPlacedEchoServer<R>(
    poller: PollerKind, ioLoops: Int = 2, placement: LoopPlacement,
    _ body: (EventLoopGroup, TCPServer, UInt16) throws -> R
) throws -> R {
    try withGroup(poller: poller, ioLoops: ioLoops, placement: placement) { group in
        let server = TCPServer(group: group, callbacks: EchoService.callbacks())
        let port = try server.start().port
        defer { server.shutdown(timeout: .seconds(2)) }
        return try body(group, server, port)
    }
}

/// Connects `n` clients one after another, each waiting for an echo (so the server has placed and registered it
/// before the next one arrives).
private func connectEchoing(_ n: Int, port: UInt16) throws -> [BlockingSocket] {
    var out: [BlockingSocket] = []
    for i in 0..<n {
        let c = try BlockingSocket(port: port)
        c.setReceiveTimeout(seconds: 10)
        out.append(c)
        try c.sendAll([UInt8(i)])
        #expect(try c.receive(exactly: 1) == [UInt8(i)])
    }
    return out
}

@Suite("Loop placement: how many loops take new connections, and which", .serialized)
struct PlacementTests {
    @Test("active loops: one per core that is at least 0.7 free, at least one, at most the loop count")
    func activeLoopArithmetic() {
        #expect(LoopPlacement.activeLoops(freeCores: 0, loopCount: 4) == 1)
        #expect(LoopPlacement.activeLoops(freeCores: 0.69, loopCount: 4) == 1)
        #expect(LoopPlacement.activeLoops(freeCores: 1.69, loopCount: 4) == 1)
        #expect(LoopPlacement.activeLoops(freeCores: 1.7, loopCount: 4) == 2)
        #expect(LoopPlacement.activeLoops(freeCores: 3.7, loopCount: 4) == 4)
        #expect(LoopPlacement.activeLoops(freeCores: 64, loopCount: 4) == 4)
        #expect(LoopPlacement.activeLoops(freeCores: .nan, loopCount: 3) == 3)
        #expect(LoopPlacement.activeLoops(freeCores: .infinity, loopCount: 3) == 3)
        #expect(LoopPlacement.activeLoops(freeCores: -5, loopCount: 3) == 1)
        #expect(LoopPlacement.activeLoops(freeCores: -.infinity, loopCount: 3) == 1)
        #expect(LoopPlacement.activeLoops(freeCores: 4, loopCount: 0) == 1)
        // With the count in force: up at 0.8 of the next core free, down below 0.6 of the last one.
        #expect(LoopPlacement.activeLoops(freeCores: 1.75, loopCount: 4, current: 1) == 1)
        #expect(LoopPlacement.activeLoops(freeCores: 1.8, loopCount: 4, current: 1) == 2)
        #expect(LoopPlacement.activeLoops(freeCores: 1.65, loopCount: 4, current: 2) == 2)
        #expect(LoopPlacement.activeLoops(freeCores: 1.55, loopCount: 4, current: 2) == 1)
        #expect(LoopPlacement.activeLoops(freeCores: 3.9, loopCount: 4, current: 1) == 4)
        #expect(LoopPlacement.activeLoops(freeCores: 0.1, loopCount: 4, current: 4) == 1)
        #expect(LoopPlacement.activeLoops(freeCores: 9, loopCount: 4, current: 7) == 4)  // out of range: ignored
        // Property: within 1...loopCount and never fewer loops for more free cores.
        for loops in 1...8 {
            var previous = 0
            for tenth in 0...100 {
                let free = Double(tenth) / 10
                let n = LoopPlacement.activeLoops(freeCores: free, loopCount: loops)
                #expect((1...loops).contains(n))
                #expect(n >= previous)
                previous = n
                // Hysteresis only delays a change: never past the plain answer, never the wrong way.
                for current in 1...loops {
                    let h = LoopPlacement.activeLoops(freeCores: free, loopCount: loops, current: current)
                    #expect(h == current || (h - current).signum() == (n - current).signum())
                    #expect(abs(h - n) <= abs(current - n))
                }
            }
        }
    }

    @Test("free cores: online cores minus what the rest of the machine used over the window")
    func freeCoreArithmetic() {
        typealias S = FreeCoreMeter.Sample
        let a = S(machineTicks: 1000, processNanoseconds: 0, wallNanoseconds: 0)
        // One second, 100 ticks per second: the machine used 1.5 cores, this process 0.5 of them.
        let b = S(machineTicks: 1150, processNanoseconds: 500_000_000, wallNanoseconds: 1_000_000_000)
        #expect(FreeCoreMeter.freeCores(from: a, to: b, cores: 2, ticksPerSecond: 100) == 1.0)
        // This process alone: every core is free for it.
        let c = S(machineTicks: 1050, processNanoseconds: 500_000_000, wallNanoseconds: 1_000_000_000)
        #expect(FreeCoreMeter.freeCores(from: a, to: c, cores: 2, ticksPerSecond: 100) == 2.0)
        // Tick rounding can make the process look busier than the machine: still at most every core.
        let d = S(machineTicks: 1040, processNanoseconds: 500_000_000, wallNanoseconds: 1_000_000_000)
        #expect(FreeCoreMeter.freeCores(from: a, to: d, cores: 2, ticksPerSecond: 100) == 2.0)
        // Others take more than the machine has (steal, rounding): none free, never negative.
        let e = S(machineTicks: 1300, processNanoseconds: 0, wallNanoseconds: 1_000_000_000)
        #expect(FreeCoreMeter.freeCores(from: a, to: e, cores: 2, ticksPerSecond: 100) == 0.0)
        // No time passed, or a counter went backwards: no answer.
        #expect(FreeCoreMeter.freeCores(from: a, to: a, cores: 2, ticksPerSecond: 100) == nil)
        let back = S(machineTicks: 999, processNanoseconds: 0, wallNanoseconds: 1_000_000_000)
        #expect(FreeCoreMeter.freeCores(from: a, to: back, cores: 2, ticksPerSecond: 100) == nil)
    }

    @Test("smoothing: free cores fall at once and rise back over riseSeconds")
    func smoothing() {
        let rise = FreeCoreMeter.riseSeconds
        #expect(FreeCoreMeter.smoothed(previous: nil, measured: 1.5, elapsedSeconds: 0.1) == 1.5)
        #expect(FreeCoreMeter.smoothed(previous: 2, measured: 0.25, elapsedSeconds: 0.1) == 0.25)
        #expect(FreeCoreMeter.smoothed(previous: 0, measured: 2, elapsedSeconds: rise / 4) == 0.5)
        #expect(FreeCoreMeter.smoothed(previous: 0, measured: 2, elapsedSeconds: rise * 10) == 2)
        #expect(FreeCoreMeter.smoothed(previous: 0, measured: 2, elapsedSeconds: -1) == 0)
        // Property: the answer lies between the previous value and the measurement, and never above either
        // when the measurement fell.
        var g = SystemRandomNumberGenerator()
        for _ in 0..<10_000 {
            let previous = Double.random(in: 0...64, using: &g)
            let measured = Double.random(in: 0...64, using: &g)
            let v = FreeCoreMeter.smoothed(previous: previous, measured: measured,
                                           elapsedSeconds: Double.random(in: 0...5, using: &g))
            #expect(v >= min(previous, measured) && v <= max(previous, measured))
            if measured <= previous { #expect(v == measured) }
        }
    }

    @Test("/proc/stat: user, nice, system and steal of the allowed CPUs; anything else is refused, never a crash")
    func parseProcStat() {
        let text = Array(("cpu  100 2 30 5000 7 1 4 8 0 0\ncpu0 50 1 15 2500 3 0 2 4 0 0\n"
                          + "cpu1 50 1 15 2500 4 1 2 4 0 0\nintr 1 2 3\n").utf8)
        #expect(FreeCoreMeter.parseBusyTicks(text[...], cpus: nil) == 100 + 2 + 30 + 8)
        #expect(FreeCoreMeter.parseBusyTicks(text[...], cpus: [0]) == 50 + 1 + 15 + 4)
        #expect(FreeCoreMeter.parseBusyTicks(text[...], cpus: [0, 1]) == 2 * (50 + 1 + 15 + 4))
        #expect(FreeCoreMeter.parseBusyTicks(text[...], cpus: [0, 5]) == nil, "a CPU without a line")
        for bad in ["", "cpu 1 2 3\n", "cpu0 1 2 3 4 5 6 7 8\n", "cpu 1 2 x 4 5 6 7 8\n",
                    "cpu 18446744073709551615 1 0 0 0 0 0 0\n", "intr 1 2 3 4 5 6 7 8\n", "cpu 1 2 3 4 5 6 7 -8\n"] {
            #expect(FreeCoreMeter.parseBusyTicks(Array(bad.utf8)[...], cpus: nil) == nil,
                    "accepted \(bad.debugDescription)")
        }
        #expect(FreeCoreMeter.parseBusyTicks(Array("cpux 1 2 3 4 5 6 7 8\n".utf8)[...], cpus: [0]) == nil)
        // Random and mutated text: an answer or nil, never a trap.
        var g = SystemRandomNumberGenerator()
        let alphabet = Array("cpu 0123456789\n-x".utf8)
        for _ in 0..<20_000 {
            var line = Array(text.prefix(Int.random(in: 0...text.count, using: &g)))
            for _ in 0..<Int.random(in: 0...4, using: &g) where !line.isEmpty {
                line[Int.random(in: 0..<line.count, using: &g)] = alphabet.randomElement(using: &g)!
            }
            if Bool.random(using: &g) {
                line.append(contentsOf: (0..<8).map { _ in UInt8.random(in: 0...255, using: &g) })
            }
            _ = FreeCoreMeter.parseBusyTicks(line[...], cpus: Bool.random(using: &g) ? nil : [0, 1])
        }
    }

    @Test("the system meter reads this machine: between 0 and the online cores")
    func systemMeter() throws {
        let meter = FreeCoreMeter()
        #expect(meter.sample() == nil)  // the first call only takes the baseline
        var x: UInt64 = 1
        for i in 0..<2_000_000 { x = x &* 6364136223846793005 &+ UInt64(i) }  // some CPU time in between
        let free = try #require(meter.sample(), "no reading (x \(x))")
        #expect(free >= 0 && free <= Double(SystemInfo.coreCount))
    }

    @Test("adaptive: a busy machine packs new connections on one loop; free cores spread them, fewest first",
          arguments: PollerKind.allCases)
    func adaptivePlacement(poller: PollerKind) throws {
        let freeTenths = Atomic<Int>(5)
        // The hour-long interval keeps the acceptor's own measurements out of the way: the test measures.
        let placement = LoopPlacement.adaptive(interval: .seconds(3600)) {
            Double(freeTenths.load(ordering: .relaxed)) / 10
        }
        try withPlacedEchoServer(poller: poller, placement: placement) { group, server, port in
            // Half a core free: one loop takes everything.
            group.refreshPlacement()
            var first = try connectEchoing(4, port: port)
            defer { for c in first { c.close() } }
            #expect(group.activeLoopCount == 1)
            #expect(connectionsPerLoop(server) == [1: 4])
            #expect(group.ioLoops.map(\.serverConnectionCount) == [4, 0])

            // Two cores free: both loops, the empty one first until they are even.
            freeTenths.store(20, ordering: .relaxed)
            group.refreshPlacement()
            let second = try connectEchoing(6, port: port)
            defer { for c in second { c.close() } }
            #expect(group.activeLoopCount == 2)
            #expect(connectionsPerLoop(server) == [1: 5, 2: 5])

            // Closed connections leave their loop's count, and new ones fill the gap.
            for c in first { c.close() }
            first = []
            #expect(eventually { server.connectionCount == 6 })
            #expect(eventually { group.ioLoops.map(\.serverConnectionCount) == [1, 5] })
            let third = try connectEchoing(4, port: port)
            defer { for c in third { c.close() } }
            #expect(connectionsPerLoop(server) == [1: 5, 2: 5])
            for c in second + third { c.close() }
            #expect(eventually { group.ioLoops.map(\.serverConnectionCount) == [0, 0] })
        }
    }

    @Test("round robin: every loop in turn, whatever the machine's load", arguments: PollerKind.allCases)
    func roundRobinPlacement(poller: PollerKind) throws {
        try withPlacedEchoServer(poller: poller, placement: .roundRobin) { group, server, port in
            let clients = try connectEchoing(6, port: port)
            defer { for c in clients { c.close() } }
            #expect(group.activeLoopCount == 2)
            #expect(connectionsPerLoop(server) == [1: 3, 2: 3])
            // Empty loop 1; round robin still alternates (the least loaded loop would take both newcomers).
            let onLoop1 = Set(server.connectionIDs.compactMap { server.connection(id: $0) }
                .filter { $0.loop.index == 1 }.map(\.peerAddress.port))
            for c in clients where onLoop1.contains(localPort(of: c.fd)) { c.close() }
            #expect(eventually { connectionsPerLoop(server) == [2: 3] })
            let more = try connectEchoing(2, port: port)
            defer { for c in more { c.close() } }
            #expect(connectionsPerLoop(server) == [1: 1, 2: 4])
        }
    }

    @Test("adaptive: no measurement (nil) keeps the last decision; until the first one every loop serves",
          arguments: PollerKind.allCases)
    func adaptiveEdges(poller: PollerKind) throws {
        let answer = Mutex<Double?>(0.5)
        let measured = LoopPlacement.adaptive(interval: .seconds(3600)) { answer.withLock { $0 } }
        try withPlacedEchoServer(poller: poller, placement: measured) { group, server, port in
            #expect(group.activeLoopCount == 2)  // not measured yet
            group.refreshPlacement()
            let first = try connectEchoing(1, port: port)
            defer { for c in first { c.close() } }
            #expect(group.activeLoopCount == 1)
            answer.withLock { $0 = nil }
            group.refreshPlacement()
            let second = try connectEchoing(3, port: port)
            defer { for c in second { c.close() } }
            #expect(group.activeLoopCount == 1)
            #expect(connectionsPerLoop(server) == [1: 4])
        }

        // Within the interval nothing is measured: every loop takes connections until the first measurement.
        let unmeasured = LoopPlacement.adaptive(interval: .seconds(3600)) { 0.5 }
        try withPlacedEchoServer(poller: poller, placement: unmeasured) { group, server, port in
            let spread = try connectEchoing(4, port: port)
            defer { for c in spread { c.close() } }
            #expect(group.activeLoopCount == 2)
            #expect(connectionsPerLoop(server) == [1: 2, 2: 2])
        }
    }

    @Test("adaptive with no separate I/O loops: the acceptor loop serves, nothing is measured",
          arguments: PollerKind.allCases)
    func adaptiveSingleLoop(poller: PollerKind) throws {
        let calls = Atomic<Int>(0)
        let placement = LoopPlacement.adaptive(interval: .milliseconds(1)) {
            calls.wrappingAdd(1, ordering: .relaxed)
            return 0
        }
        try withPlacedEchoServer(poller: poller, ioLoops: 0, placement: placement) { group, server, port in
            let clients = try connectEchoing(3, port: port)
            defer { for c in clients { c.close() } }
            #expect(connectionsPerLoop(server) == [0: 3])
            #expect(group.acceptorLoop.serverConnectionCount == 3)
            group.refreshPlacement()
            #expect(calls.load(ordering: .relaxed) == 0)
        }
    }

    @Test("tasks posted to an idle loop from another thread always run (the loop sleeps without a timeout)",
          arguments: PollerKind.allCases)
    func idleLoopWakes(poller: PollerKind) throws {
        let group = try EventLoopGroup(ioLoops: 1, configuration: LoopConfiguration(poller: poller))
        defer { group.shutdown() }
        let loop = group.ioLoops[0]
        let ran = DispatchSemaphore(value: 0)
        var missed = 0
        for i in 0..<20_000 {
            if i % 1000 == 0 { usleep(200) }  // let the loop fall asleep in the poller now and then
            loop.execute { ran.signal() }
            if ran.wait(timeout: .now() + 5) == .timedOut { missed += 1 }
        }
        #expect(missed == 0)
        let fired = DispatchSemaphore(value: 0)
        loop.schedule(after: .milliseconds(5)) { fired.signal() }
        #expect(fired.wait(timeout: .now() + 5) == .success)
    }
}
