#if canImport(Glibc)
import Glibc
#endif
import CSwitchyardLinux

/// poll(2) backend: a dense pollfd array plus a descriptor -> slot map. Loop thread only.
final class PollPoller: Poller {
    // @exclusivity(unchecked): a poller is used by its loop's thread only, with no reentrant access.
    @exclusivity(unchecked) private var fds: [pollfd] = []
    @exclusivity(unchecked) private var slotOf: [Int32: Int] = [:]

    private static func pollEvents(_ interest: IOInterest) -> Int16 {
        var e: Int16 = 0
        if interest.contains(.read) { e |= Int16(POLLIN) | Int16(bitPattern: UInt16(SY_EV_RDHUP)) }
        if interest.contains(.write) { e |= Int16(POLLOUT) }
        return e
    }

    func register(fd: Int32, interest: IOInterest) throws {
        if slotOf[fd] != nil { throw ReactorError.alreadyRegistered(fd: fd) }
        slotOf[fd] = fds.count
        fds.append(pollfd(fd: fd, events: Self.pollEvents(interest), revents: 0))
    }

    func modify(fd: Int32, interest: IOInterest) throws {
        guard let slot = slotOf[fd] else { throw IOError(errnoCode: ENOENT, call: "poll(modify)") }
        fds[slot].events = Self.pollEvents(interest)
    }

    func unregister(fd: Int32) {
        guard let slot = slotOf.removeValue(forKey: fd) else { return }
        let last = fds.count - 1
        if slot != last {
            fds[slot] = fds[last]
            slotOf[fds[slot].fd] = slot
        }
        fds.removeLast()
    }

    func wait(timeoutMs: Int32, events: UnsafeMutablePointer<sy_event>, capacity: Int) throws -> Int {
        // A signal (EINTR) ends the wait with no events, as for epoll.
        let r = try fds.withUnsafeMutableBufferPointer { buf throws(IOError) in
            try Posix.check("poll", retryInterrupted: false) {
                Int(Glibc.poll(buf.baseAddress, nfds_t(buf.count), timeoutMs))
            }
        }
        guard case .processed(let n) = r, n > 0 else { return 0 }
        var out = 0
        for i in 0..<fds.count where fds[i].revents != 0 {
            let r = Int32(fds[i].revents)
            var bits: UInt32 = 0
            if r & Int32(POLLIN) != 0 { bits |= PollBits.read }
            if r & Int32(POLLPRI) != 0 { bits |= PollBits.read }
            if r & Int32(POLLOUT) != 0 { bits |= PollBits.write }
            if r & Int32(POLLERR) != 0 { bits |= PollBits.error }
            if r & Int32(POLLHUP) != 0 { bits |= PollBits.hangup }
            if r & Int32(SY_EV_RDHUP) != 0 { bits |= PollBits.readHangup }
            if r & Int32(POLLNVAL) != 0 { bits |= PollBits.error }
            events[out] = sy_event(fd: fds[i].fd, events: bits)
            out += 1
            if out == capacity { break }
        }
        return out
    }

    func close() {}
}
