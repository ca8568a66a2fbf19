#if canImport(Glibc)
import Glibc
#endif
import CSwitchyardLinux

/// A non-blocking pipe for splicing.
struct TunnelPipe {
    let read: Int32
    let write: Int32
    let capacity: Int

    func close() {
        Posix.close(read)
        Posix.close(write)
    }
}

/// Empty pipes a loop's tunnels share: a flow takes one while its bytes are in flight and gives it back once
/// they are delivered, so a loop needs about as many pipes as it has flows stalled at once. Keeps at most
/// `keep`. Loop thread only.
struct TunnelPipePool {
    private var free: [TunnelPipe] = []
    static let keep = 16

    mutating func take(size: Int) -> TunnelPipe? {
        if let pipe = free.popLast() {
            if pipe.capacity >= size { return pipe }
            pipe.close()
        }
        var fds: [Int32] = [-1, -1]
        guard sy_pipe_nonblocking(&fds) == 0 else { return nil }
        var capacity = Int(sy_set_pipe_size(fds[1], Int32(clamping: size)))
        if capacity <= 0 { capacity = 65536 }  // the kernel's default, when it refuses the size
        return TunnelPipe(read: fds[0], write: fds[1], capacity: capacity)
    }

    mutating func give(_ pipe: TunnelPipe) {
        if free.count < Self.keep { free.append(pipe) } else { pipe.close() }
    }

    mutating func closeAll() {
        for pipe in free { pipe.close() }
        free.removeAll()
    }
}
