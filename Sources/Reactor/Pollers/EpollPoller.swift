#if canImport(Glibc)
import Glibc
#endif
import CSwitchyardLinux

/// epoll backend, level-triggered. Loop thread only.
final class EpollPoller: Poller {
    private let epfd: Int32
    private static let ctlAdd: Int32 = 1
    private static let ctlDelete: Int32 = 2
    private static let ctlModify: Int32 = 3

    init() throws {
        let fd = sy_epoll_create()
        if fd < 0 { throw IOError(errnoCode: errno, call: "epoll_create1") }
        epfd = fd
    }

    func register(fd: Int32, interest: IOInterest) throws {
        if sy_epoll_ctl(epfd, Self.ctlAdd, fd, Self.mask(interest)) < 0 {
            if errno == EEXIST { throw ReactorError.alreadyRegistered(fd: fd) }
            throw IOError(errnoCode: errno, call: "epoll_ctl(ADD)")
        }
    }

    func modify(fd: Int32, interest: IOInterest) throws {
        if sy_epoll_ctl(epfd, Self.ctlModify, fd, Self.mask(interest)) < 0 {
            throw IOError(errnoCode: errno, call: "epoll_ctl(MOD)")
        }
    }

    /// Read-hangup is asked for only with read interest; otherwise a half-closed peer would wake the loop forever.
    private static func mask(_ interest: IOInterest) -> UInt32 {
        interest.contains(.read) ? interest.rawValue | SY_EV_RDHUP : interest.rawValue
    }

    func unregister(fd: Int32) {
        _ = sy_epoll_ctl(epfd, Self.ctlDelete, fd, 0)
    }

    func wait(timeoutMs: Int32, events: UnsafeMutablePointer<sy_event>, capacity: Int) throws -> Int {
        let n = sy_epoll_wait(epfd, events, Int32(capacity), timeoutMs)
        if n < 0 {
            if errno == EINTR { return 0 }
            throw IOError(errnoCode: errno, call: "epoll_wait")
        }
        return Int(n)
    }

    func close() { Posix.close(epfd) }
}
