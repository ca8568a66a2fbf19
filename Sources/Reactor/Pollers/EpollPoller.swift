#if canImport(Glibc)
import Glibc
#endif
import CSwitchyardLinux

/// epoll backend, level-triggered. Loop thread only.
final class EpollPoller: Poller {
    private let epfd: Int32

    init() throws {
        epfd = Int32(try Posix.complete("epoll_create1") { Int(sy_epoll_create()) })
    }

    func register(fd: Int32, interest: IOInterest) throws {
        let mask = Self.mask(interest)
        do {
            _ = try Posix.complete("epoll_ctl(ADD)") { Int(sy_epoll_ctl(epfd, SY_EPOLL_CTL_ADD, fd, mask)) }
        } catch {
            if error.errnoCode == EEXIST { throw ReactorError.alreadyRegistered(fd: fd) }
            throw error
        }
    }

    func modify(fd: Int32, interest: IOInterest) throws {
        let mask = Self.mask(interest)
        _ = try Posix.complete("epoll_ctl(MOD)") { Int(sy_epoll_ctl(epfd, SY_EPOLL_CTL_MOD, fd, mask)) }
    }

    /// Read-hangup is asked for only with read interest; otherwise a half-closed peer would wake the loop forever.
    private static func mask(_ interest: IOInterest) -> UInt32 {
        interest.contains(.read) ? interest.rawValue | SY_EV_RDHUP : interest.rawValue
    }

    func unregister(fd: Int32) {
        _ = try? Posix.complete("epoll_ctl(DEL)") { Int(sy_epoll_ctl(epfd, SY_EPOLL_CTL_DEL, fd, 0)) }
    }

    /// A signal (EINTR) ends the wait with no events: the loop checks its tasks and timers, then waits again.
    func wait(timeoutMs: Int32, events: UnsafeMutablePointer<sy_event>, capacity: Int) throws -> Int {
        let r = try Posix.check("epoll_wait", retryInterrupted: false) {
            Int(sy_epoll_wait(epfd, events, Int32(capacity), timeoutMs))
        }
        guard case .processed(let n) = r else { return 0 }
        return n
    }

    func close() { Posix.close(epfd) }
}
