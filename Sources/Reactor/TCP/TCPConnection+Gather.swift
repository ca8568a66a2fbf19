#if canImport(Glibc)
import Glibc
#endif
import CSwitchyardLinux

/// The sends of several pieces at once: a gather write (writev, or sendmsg with MSG_MORE) and sendfile(2).
extension TCPConnection {
    /// Sends pieces in order, in one writev when the socket takes them (a gather write: a media chunk and the framing
    /// around it, several chunks of a stream, with no copy into one buffer). What the socket does not take is queued
    /// (copied), as with the other sends. At most 512 pieces a writev; more are written in turn. `moreFollows`: the
    /// caller sends more at once (``sendFileInLoop(_:offset:count:)`` of the bytes these pieces frame), so the kernel
    /// holds them to leave in the same segments (MSG_MORE). Loop thread only.
    @discardableResult
    public func sendInLoop(gathering pieces: [UnsafeRawBufferPointer], moreFollows: Bool = false) -> Bool {
        loop.assertInLoopThread()
        guard machine.isConnected else { return false }
        lastSendTime = loop.wakeTime
        var next = 0  // the first piece not fully written
        var offset = 0  // bytes of `pieces[next]` already written
        func skipWritten() {
            while next < pieces.count && pieces[next].count == offset {
                next += 1
                offset = 0
            }
        }
        skipWritten()
        while output.isEmpty && next < pieces.count {
            let count = min(pieces.count - next, 512)
            var total = 0
            let written: Int? = withUnsafeTemporaryAllocation(of: iovec.self, capacity: count) { iov in
                for i in 0..<count {
                    let piece = pieces[next + i]
                    let skip = i == 0 ? offset : 0
                    let base = piece.baseAddress.map { UnsafeMutableRawPointer(mutating: $0 + skip) }
                    iov[i] = iovec(iov_base: base, iov_len: piece.count - skip)
                    total += piece.count - skip
                }
                do {
                    let r = moreFollows ? try Posix.sendMore(fd, iov.baseAddress!, Int32(count))
                        : try Posix.writev(fd, iov.baseAddress!, Int32(count))
                    if case .processed(let n) = r { return n }
                    return 0  // would block
                } catch {
                    failWrite(error)
                    return nil
                }
            }
            guard let written else { return false }
            bytesWritten &+= UInt64(written)
            var n = written
            while n > 0 {
                let left = pieces[next].count - offset
                if n >= left {
                    n -= left
                    next += 1
                    offset = 0
                } else {
                    offset += n
                    n = 0
                }
            }
            skipWritten()
            if written < total { break }  // the socket is full: the rest is queued
        }
        while next < pieces.count {
            let rest = UnsafeRawBufferPointer(rebasing: pieces[next][offset...])
            next += 1
            offset = 0
            if !rest.isEmpty { guard enqueue(rest) else { return false } }
        }
        return true
    }

    /// Sends up to `count` bytes of the file `file` from `offset` with sendfile(2): the kernel sends the file's
    /// pages (a memfd's, the page cache's) without copying them through user memory, so bytes sent to many sockets
    /// are not copied once per socket. Nothing is queued: returns the bytes the socket took now (0 when it is full,
    /// or while output is queued, which goes first), and the caller sends the rest later (once
    /// `queuedOutputBytes` is 0 and the socket has room). The file's bytes must not change until the peer has read
    /// them (the kernel sends the pages, not a copy). nil when the connection is not open, or the send failed
    /// (which closes it). Loop thread only.
    public func sendFileInLoop(_ file: Int32, offset: Int64, count: Int) -> Int? {
        loop.assertInLoopThread()
        guard machine.isConnected else { return nil }
        guard output.isEmpty, count > 0 else { return 0 }
        lastSendTime = loop.wakeTime
        var position = offset
        do {
            guard case .processed(let n) = try Posix.sendFile(to: fd, from: file, offset: &position, count: count)
            else { return 0 }
            bytesWritten &+= UInt64(n)
            return n
        } catch {
            failWrite(error)
            return nil
        }
    }
}
