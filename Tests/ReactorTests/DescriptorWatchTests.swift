import Glibc
import Reactor
import Testing
import TestSupport

/// A descriptor the loop does not own (a database library's socket) watched on every poller.
@Suite("DescriptorWatch: readiness of a foreign descriptor on the loop's thread")
struct DescriptorWatchTests {
    /// Holds the watch on the loop (it is loop-bound).
    private final class Box: @unchecked Sendable {  // touched on the loop's thread only (onLoop, the handler)
        var watch: DescriptorWatch?
        var readable = 0
        var writable = 0
        var offLoop = 0
    }

    @Test("readable when the peer writes, writable when asked, nothing after cancel; the descriptor stays open",
          arguments: PollerKind.allCases)
    func readinessAndCancel(poller: PollerKind) throws {
        var fds: [Int32] = [0, 0]
        #expect(socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0, &fds) == 0)
        defer {
            close(fds[0])
            close(fds[1])
        }
        let (mine, peer) = (fds[0], fds[1])
        _ = fcntl(mine, F_SETFL, fcntl(mine, F_GETFL) | O_NONBLOCK)
        try withGroup(poller: poller, ioLoops: 1) { group in
            let loop = group.ioLoops[0]
            let box = Box()
            let started = try onLoop(loop) { () -> Bool in
                do {
                    box.watch = try DescriptorWatch(fd: mine, interest: .read, loop: loop) { readable, writable in
                        if !loop.inLoopThread { box.offLoop += 1 }
                        if readable {
                            box.readable += 1
                            var byte: UInt8 = 0
                            _ = read(mine, &byte, 1)  // drained, so the level-triggered event stops
                        }
                        if writable {
                            box.writable += 1
                            box.watch?.interest = .read
                        }
                    }
                    return true
                } catch {
                    return false
                }
            }
            #expect(started)
            #expect(try onLoop(loop) { box.readable } == 0, "nothing to read yet")
            var byte: UInt8 = 7
            #expect(write(peer, &byte, 1) == 1)
            #expect(eventually { (try? onLoop(loop) { box.readable }) == 1 })
            try onLoop(loop) { box.watch?.interest = [.read, .write] }
            #expect(eventually { (try? onLoop(loop) { box.writable }) == 1 }, "writable once, then read only again")
            #expect(try onLoop(loop) { box.watch?.interest } == .read)
            try onLoop(loop) {
                box.watch?.cancel()
                box.watch?.cancel()  // a no-op
            }
            #expect(try onLoop(loop) { box.watch?.isActive } == false)
            #expect(write(peer, &byte, 1) == 1)
            // The loop goes round (a task posted after the write runs after its poll) without reporting the byte.
            for _ in 0..<3 { _ = try onLoop(loop) { 0 } }
            #expect(try onLoop(loop) { box.readable } == 1)
            #expect(try onLoop(loop) { box.offLoop } == 0)
            var back: UInt8 = 0
            #expect(read(mine, &back, 1) == 1 && back == 7, "the descriptor is still open and ours")
        }
    }
}
