#if canImport(Glibc)
import Glibc
#endif
import CSwitchyardLinux
import Dispatch
import Synchronization

/// A UDP socket on a loop: datagrams in through a handler, datagrams out with `send(_:to:)` (any thread) or
/// `sendInLoop(_:to:)` (loop thread, no copy).
///
/// Used for servers (bound to a known port) and clients (bound to port 0). Each datagram is handed to the
/// handler straight from the loop's scratch area, with its sender, so a reply goes to the address that sent that
/// request. Loop thread only, except where a member says otherwise.
public final class UDPChannel: @unchecked Sendable, EventHandler {
    // @unchecked Sendable: `fd` reads/writes and `isOpen` are touched on `loop` only; counters are Atomics.

    /// Called on the loop for each datagram: the channel, the payload (valid during the call only), the sender.
    public typealias Handler = @Sendable (UDPChannel, UnsafeRawBufferPointer, SocketAddress) -> Void

    public let loop: EventLoop
    public let localAddress: SocketAddress
    let fd: Int32
    private let handler: Handler
    // @exclusivity(unchecked): read and written on the loop thread only, never across a reentrant call.
    @exclusivity(unchecked) private var isOpen = true
    private let receivedCount = Atomic<Int>(0)
    private let sentCount = Atomic<Int>(0)
    private let truncatedCount = Atomic<Int>(0)
    private let sendFailures = Atomic<Int>(0)

    /// Largest datagram payload over IPv4.
    public static let maxDatagram = 65_507

    /// Binds `host:port` (port 0: the kernel picks) and starts receiving on `loop`. Safe to call from any thread
    /// except `loop`'s own when it is blocked.
    public init(loop: EventLoop, host: String = "127.0.0.1", port: Int = 0, handler: @escaping Handler) throws {
        let address = try SocketAddress(host: host, port: port)
        let fd = try Posix.socket(domain: AF_INET, type: Int32(SOCK_DGRAM.rawValue))
        do {
            // No SO_REUSEADDR: UDP has no TIME_WAIT to step over, and on Linux it would let a second socket bind
            // a port in use and silently take its datagrams. A busy port is an error (EADDRINUSE).
            try Posix.bind(fd, to: address, label: "bind udp")
            // Room for bursts of requests between two loop iterations.
            try? Posix.setOption(fd, SOL_SOCKET, SO_RCVBUF, 4 << 20)
        } catch {
            Posix.close(fd)
            throw error
        }
        self.fd = fd
        self.loop = loop
        self.handler = handler
        self.localAddress = SocketAddress.local(of: fd) ?? address
        do {
            try loop.submitAndWait { [self] in try loop.register(fd: fd, interest: .read, handler: self) }
        } catch {
            // Not registered (the loop refused it, or has stopped): no other thread knows this channel yet.
            isOpen = false
            Posix.close(fd)
            throw error
        }
    }

    /// Datagrams received so far.
    public var received: Int { receivedCount.load(ordering: .relaxed) }
    /// Datagrams sent so far.
    public var sent: Int { sentCount.load(ordering: .relaxed) }
    /// Datagrams larger than the receive area (dropped).
    public var truncated: Int { truncatedCount.load(ordering: .relaxed) }
    /// Sends the kernel refused (full socket buffer, unreachable peer): UDP drops them.
    public var failedSends: Int { sendFailures.load(ordering: .relaxed) }

    /// Reads and dispatches what is pending. Loop thread only.
    func handleEvents(_ events: UInt32) {
        loop.assertInLoopThread()
        // A bounded batch per wakeup, so one busy socket cannot starve the loop's other descriptors.
        let scratch = loop.scratch
        for _ in 0..<64 {
            guard isOpen else { return }
            // EAGAIN, or an ICMP error reported on the socket: nothing more to read now.
            guard case .processed(let (n, sender))? = try? Posix.receiveDatagram(fd, into: scratch) else { return }
            receivedCount.wrappingAdd(1, ordering: .relaxed)
            if n > scratch.count {
                truncatedCount.wrappingAdd(1, ordering: .relaxed)
                continue
            }
            handler(self, UnsafeRawBufferPointer(start: scratch.baseAddress!, count: n), sender)
        }
    }

    /// Sends one datagram. Loop thread only. False if the kernel refused it (it is dropped, and counted).
    @discardableResult
    public func sendInLoop(_ bytes: UnsafeRawBufferPointer, to address: SocketAddress) -> Bool {
        sendInLoop(bytes, UnsafeRawBufferPointer(start: nil, count: 0), to: address)
    }

    /// Sends one datagram made of two pieces (a header and a body). Loop thread only.
    @discardableResult
    public func sendInLoop(
        _ first: UnsafeRawBufferPointer, _ second: UnsafeRawBufferPointer, to address: SocketAddress
    ) -> Bool {
        loop.assertInLoopThread()
        guard isOpen else { return false }
        var sin = address.sockaddrIn
        var iov = (
            iovec(iov_base: UnsafeMutableRawPointer(mutating: first.baseAddress), iov_len: first.count),
            iovec(iov_base: UnsafeMutableRawPointer(mutating: second.baseAddress), iov_len: second.count)
        )
        let n = withUnsafeMutablePointer(to: &sin) { sinPtr in
            withUnsafeMutableBytes(of: &iov) { iovRaw in
                var msg = msghdr()
                msg.msg_name = UnsafeMutableRawPointer(sinPtr)
                msg.msg_namelen = socklen_t(MemoryLayout<sockaddr_in>.size)
                msg.msg_iov = iovRaw.baseAddress!.assumingMemoryBound(to: iovec.self)
                msg.msg_iovlen = second.count > 0 ? 2 : 1
                return (try? Posix.sendMessage(fd, &msg)) ?? .wouldBlock
            }
        }
        guard case .processed = n else {
            sendFailures.wrappingAdd(1, ordering: .relaxed)
            return false
        }
        sentCount.wrappingAdd(1, ordering: .relaxed)
        return true
    }

    /// Sends every datagram of `batch` in one system call (sendmmsg(2)), each to its own address. Loop thread only.
    /// Returns how many the kernel took; the others are dropped and counted in `failedSends`.
    @discardableResult
    public func sendInLoop(_ batch: DatagramBatch) -> Int {
        sendInLoop(batch, refused: nil)
    }

    /// As ``sendInLoop(_:)``, and marks in `refused` (as many entries as `batch`, all false when called) the
    /// datagrams the kernel refused. Loop thread only.
    @discardableResult
    public func sendInLoop(_ batch: DatagramBatch, refused: inout [Bool]) -> Int {
        precondition(refused.count == batch.count, "one entry per datagram")
        var marks = [UInt8](repeating: 0, count: batch.count)
        let taken = marks.withUnsafeMutableBufferPointer { sendInLoop(batch, refused: $0.baseAddress) }
        for (i, mark) in marks.enumerated() where mark != 0 { refused[i] = true }
        return taken
    }

    private func sendInLoop(_ batch: DatagramBatch, refused: UnsafeMutablePointer<UInt8>?) -> Int {
        loop.assertInLoopThread()
        guard isOpen, !batch.isEmpty else { return 0 }
        let count = batch.count
        let taken = batch.bytes.withUnsafeBytes { raw -> Int in
            withUnsafeTemporaryAllocation(of: sockaddr_in.self, capacity: count) { addresses in
                withUnsafeTemporaryAllocation(of: iovec.self, capacity: count) { payloads in
                    for (i, entry) in batch.entries.enumerated() {
                        addresses[i] = entry.address.sockaddrIn
                        let base = raw.baseAddress.map { UnsafeMutableRawPointer(mutating: $0 + entry.offset) }
                        payloads[i] = iovec(iov_base: base, iov_len: entry.count)
                    }
                    return Int(sy_send_datagrams(fd, addresses.baseAddress!, payloads.baseAddress!, UInt32(count),
                                                 refused))
                }
            }
        }
        sentCount.wrappingAdd(taken, ordering: .relaxed)
        if taken < count { sendFailures.wrappingAdd(count - taken, ordering: .relaxed) }
        return taken
    }

    /// Sends one datagram. Safe to call from any thread.
    public func send(_ bytes: [UInt8], to address: SocketAddress) {
        loop.executeInLoop { [self] in bytes.withUnsafeBytes { _ = sendInLoop($0, to: address) } }
    }

    /// Stops receiving and closes the socket. Safe to call from any thread.
    public func close() {
        loop.executeInLoop { [self] in closeInLoop() }
    }

    /// The loop stopped with the channel open: it closes (no task would close it any more).
    func loopDidStop() { closeInLoop() }

    private func closeInLoop() {
        guard isOpen else { return }
        isOpen = false
        loop.unregister(fd: fd)
        Posix.close(fd)
    }
}

/// Datagrams laid end to end in one buffer, each with its destination, for one `UDPChannel.sendInLoop(_:)`: a
/// sender queues what it has to send during a loop iteration and hands it to the kernel in one system call.
/// Reused with `removeAll()` (the storage is kept), so queuing allocates nothing once it has grown.
public struct DatagramBatch: Sendable {
    /// The payloads, end to end.
    public private(set) var bytes: [UInt8] = []
    /// Where each datagram starts in `bytes`, its length and its destination.
    public private(set) var entries: [(offset: Int, count: Int, address: SocketAddress)] = []

    public init() {}

    /// Datagrams queued.
    public var count: Int { entries.count }
    public var isEmpty: Bool { entries.isEmpty }

    /// Queues one datagram to `address`.
    public mutating func append(_ payload: [UInt8], to address: SocketAddress) {
        entries.append((bytes.count, payload.count, address))
        bytes.append(contentsOf: payload)
    }

    /// Forgets every datagram, keeping the storage.
    public mutating func removeAll() {
        bytes.removeAll(keepingCapacity: true)
        entries.removeAll(keepingCapacity: true)
    }
}

extension EventLoop {
    /// Runs `body` on the loop and waits for it; runs it inline on the loop's own thread. Must not be called from
    /// another loop that this one is waiting on. Throws `ReactorError.loopStopped` when the loop has returned from
    /// `run()`. The result crosses back to the waiting thread through a Mutex.
    func submitAndWait<T: Sendable>(_ body: @escaping @Sendable () throws -> T) throws -> T {
        if inLoopThread { return try body() }
        let result = Mutex<Result<T, Error>?>(nil)
        let done = DispatchSemaphore(value: 0)
        let queued = enqueue {
            let r = Result { try body() }
            result.withLock { $0 = r }
            done.signal()
        }
        guard queued else { throw ReactorError.loopStopped }
        done.wait()
        return try result.withLock { $0! }.get()
    }
}
