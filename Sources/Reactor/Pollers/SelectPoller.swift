#if canImport(Glibc)
import Glibc
#endif
import CSwitchyardLinux

/// select(2) backend. Descriptors at or above FD_SETSIZE are refused with
/// `ReactorError.descriptorOutOfRangeForSelect`; nothing is ever written outside an fd_set. Loop thread only.
final class SelectPoller: Poller {
    static let limit = sy_fd_setsize()
    // @exclusivity(unchecked): a poller is used by its loop's thread only, with no reentrant access.
    @exclusivity(unchecked) private var interest: [Int32: IOInterest] = [:]
    @exclusivity(unchecked) private var maxFD: Int32 = -1
    private let readSet: UnsafeMutableRawPointer
    private let writeSet: UnsafeMutableRawPointer
    private let errorSet: UnsafeMutableRawPointer

    init() {
        let size = sy_fd_set_size()
        readSet = .allocate(byteCount: size, alignment: 16)
        writeSet = .allocate(byteCount: size, alignment: 16)
        errorSet = .allocate(byteCount: size, alignment: 16)
    }

    deinit {
        readSet.deallocate()
        writeSet.deallocate()
        errorSet.deallocate()
    }

    func register(fd: Int32, interest newInterest: IOInterest) throws {
        guard fd >= 0 && fd < Self.limit else {
            throw ReactorError.descriptorOutOfRangeForSelect(fd: fd, limit: Self.limit)
        }
        if interest[fd] != nil { throw ReactorError.alreadyRegistered(fd: fd) }
        interest[fd] = newInterest
        maxFD = max(maxFD, fd)
    }

    func modify(fd: Int32, interest newInterest: IOInterest) throws {
        guard interest[fd] != nil else { throw IOError(errnoCode: ENOENT, call: "select(modify)") }
        interest[fd] = newInterest
    }

    func unregister(fd: Int32) {
        guard interest.removeValue(forKey: fd) != nil else { return }
        if fd == maxFD { maxFD = interest.keys.max() ?? -1 }
    }

    func wait(timeoutMs: Int32, events: UnsafeMutablePointer<sy_event>, capacity: Int) throws -> Int {
        sy_fd_zero(readSet)
        sy_fd_zero(writeSet)
        sy_fd_zero(errorSet)
        for (fd, i) in interest {
            if i.contains(.read) { sy_fd_set(fd, readSet) }
            if i.contains(.write) { sy_fd_set(fd, writeSet) }
            sy_fd_set(fd, errorSet)
        }
        // A signal (EINTR) ends the wait with no events, as for epoll.
        let r = try Posix.check("select", retryInterrupted: false) {
            Int(sy_select(maxFD + 1, readSet, writeSet, errorSet, timeoutMs))
        }
        guard case .processed(let n) = r, n > 0 else { return 0 }
        var out = 0
        for fd in interest.keys {
            var bits: UInt32 = 0
            if sy_fd_isset(fd, readSet) != 0 { bits |= PollBits.read }
            if sy_fd_isset(fd, writeSet) != 0 { bits |= PollBits.write }
            if sy_fd_isset(fd, errorSet) != 0 { bits |= PollBits.read }  // exceptional: let read see it
            if bits != 0 {
                events[out] = sy_event(fd: fd, events: bits)
                out += 1
                if out == capacity { break }
            }
        }
        return out
    }

    func close() {}
}
