import Reactor
import Testing
import TestSupport

/// Not Sendable: what a LoopBound exists to carry.
private final class Counter {
    var value = 0
}

@Suite("LoopBound and the loop-thread checks")
struct LoopBoundTests {
    @Test("a LoopBound made on any thread is read and written on its loop", arguments: PollerKind.allCases)
    func accessOnTheLoop(poller: PollerKind) throws {
        try withGroup(poller: poller, ioLoops: 1) { group in
            let loop = group.ioLoops[0]
            let bound = LoopBound(Counter(), loop: loop)
            let seen = try onLoop(loop) { () -> Int in
                bound.value.value += 42  // read on the loop
                var copy = bound
                copy.value = Counter()  // written on the loop
                return bound.value.value + copy.value.value
            }
            #expect(seen == 42)
            #expect(bound.loop === loop)
            // Once the loop has stopped for good no thread runs it: whoever holds the box may release what it holds.
            group.shutdown()
            var released = bound
            released.value = Counter()
            #expect(released.value.value == 0)
        }
    }

    @Test("reading a LoopBound off its loop stops the process (a precondition, kept in release builds)",
          arguments: PollerKind.allCases)
    func accessOffTheLoopStops(poller: PollerKind) async {
        await #expect(processExitsWith: .failure) { [name = poller.rawValue as String] in
            let group = try EventLoopGroup(ioLoops: 1,
                                           configuration: LoopConfiguration(poller: PollerKind(rawValue: name)!))
            let bound = LoopBound(Counter(), loop: group.ioLoops[0])
            _ = bound.value  // the test's thread, while the loop runs
        }
    }

    #if DEBUG
    @Test("a loop-only method called off its loop stops the process (debug builds)", arguments: PollerKind.allCases)
    func loopOnlyOffTheLoopStops(poller: PollerKind) async {
        await #expect(processExitsWith: .failure) { [name = poller.rawValue as String] in
            let group = try EventLoopGroup(ioLoops: 1,
                                           configuration: LoopConfiguration(poller: PollerKind(rawValue: name)!))
            let channel = try UDPChannel(loop: group.ioLoops[0]) { _, _, _ in }
            let payload: [UInt8] = [1, 2, 3]
            _ = payload.withUnsafeBytes { channel.sendInLoop($0, to: channel.localAddress) }
        }
    }
    #endif
}
