#if canImport(Glibc)
import Glibc
#endif
import LarsProtocol
import LarsWire
import LoadBalancing
import Messaging
import Reactor
import SwitchyardCore

/// The client API for one thread that can block (Lars's API style): each call sends from the caller's thread and
/// waits for the reply on the caller's own UDP socket, so a call costs two thread wake-ups (agent, caller) instead
/// of the four of the async client's loop and executor hops. Give each thread its own instance.
///
/// Same wire, same port choice and same errors as `LoadBalanceClient`. Not for async code (it blocks the thread):
/// use `LoadBalanceClient` there. Not thread-safe: one thread at a time.
public final class BlockingLoadBalanceClient {
    private let agents: AgentEndpoints
    public var agentHost: String { agents.host }
    public var agentPorts: [Int] { agents.ports }
    public var timeout: Duration { agents.timeout }
    /// Sent with every report when the agent requires it (`--report-secret`); nil: none.
    private let reportSecret: [UInt8]?
    /// How long a call polls its socket for the reply before sleeping in the kernel (see `init`).
    public let spin: Duration
    private let spinNanoseconds: UInt64
    private let fd: Int32
    private var sequence: UInt32 = 0
    private var buffer = [UInt8](repeating: 0, count: 65_536)

    /// `spin`: a call first polls its socket without sleeping for up to this long, then waits in the kernel. The
    /// agent answers on loopback in a few microseconds when it is awake; a thread that sleeps instead pays a wake-up
    /// (tens of microseconds on a virtual machine) on every call. The cost is at most `spin` of the caller's CPU per
    /// call; zero turns it off.
    public init(agentHost: String = "127.0.0.1", agentPorts: [Int] = [8888, 8889, 8890],
                timeout: Duration = .milliseconds(500), spin: Duration = .microseconds(50),
                reportSecret: [UInt8]? = nil) throws {
        agents = try AgentEndpoints(host: agentHost, ports: agentPorts, timeout: timeout)
        self.reportSecret = reportSecret
        self.spin = spin
        spinNanoseconds = spin.nanosecondsSaturated
        fd = try Posix.blockingSocket(type: Int32(SOCK_DGRAM.rawValue))
    }

    deinit { if fd >= 0 { Posix.close(fd) } }

    private func address(modid: Int32, cmdid: Int32) -> SocketAddress {
        agents.address(modid: modid, cmdid: cmdid)
    }

    private func send(_ frame: [UInt8], to address: SocketAddress) {
        _ = frame.withUnsafeBytes { raw in try? Posix.send(fd, raw, to: address) }
    }

    /// Waits for a frame accepted by `match` (stale replies of earlier, timed-out calls are skipped).
    private func receive<R>(from destination: SocketAddress, _ match: (Int32, UnsafeRawBufferPointer) -> R?) throws -> R {
        let start = SystemInfo.monotonicNanoseconds()
        let deadline = start &+ timeout.nanosecondsSaturated
        let spinUntil = start &+ min(spinNanoseconds, timeout.nanosecondsSaturated)
        while true {
            let now = SystemInfo.monotonicNanoseconds()
            guard now < deadline else {
                throw agents.timeoutError(destination)
            }
            if now >= spinUntil {
                let waitMs = Int32(min((deadline - now + 999_999) / 1_000_000, 60_000))
                let ready = (try? Posix.waitReadable(fd, timeoutMs: waitMs)) ?? false
                if !ready { continue }  // timeout (checked above), EINTR
            }
            let received = buffer.withUnsafeMutableBytes {
                try? Posix.receive(fd, into: $0, flags: Int32(MSG_DONTWAIT))
            }
            guard case .processed(let n)? = received else {  // EAGAIN, or an ICMP error (nobody on the port): wait on
                // While spinning, let the agent (or another caller) have this core if it is waiting for one.
                if now < spinUntil { sched_yield() }
                continue
            }
            let result = buffer.withUnsafeBytes { raw -> R? in
                guard case .success(let frame) = FrameParser.parseDatagram(UnsafeRawBufferPointer(rebasing:
                    raw[0..<n])) else { return nil }
                return match(frame.messageID, frame.body)
            }
            if let result { return result }
        }
    }

    /// Asks the agent for a host of (modid, cmdid); blocks up to `timeout`.
    public func getHost(modid: Int32, cmdid: Int32) throws -> GetHostResult {
        sequence &+= 1
        return try exchangeGetHost(AgentRequests.getHost(seq: sequence, modid: modid, cmdid: cmdid),
                                   reply: MessageID.getHostResponse, seq: sequence, modid: modid, cmdid: cmdid)
    }

    /// Asks the agent for the host of `key` (consistent hashing with bounded loads: the same key keeps going to
    /// the same host while it has room; a Switchyard agent only). Blocks up to `timeout`.
    public func getHost(modid: Int32, cmdid: Int32, key: [UInt8]) throws -> GetHostResult {
        sequence &+= 1
        return try exchangeGetHost(AgentRequests.getHost(seq: sequence, modid: modid, cmdid: cmdid, key: key),
                                   reply: MessageID.getHostByKeyResponse, seq: sequence, modid: modid, cmdid: cmdid)
    }

    /// `getHost(modid:cmdid:key:)` with the key's UTF-8 bytes.
    public func getHost(modid: Int32, cmdid: Int32, key: String) throws -> GetHostResult {
        try getHost(modid: modid, cmdid: cmdid, key: Array(key.utf8))
    }

    private func exchangeGetHost(_ frame: [UInt8], reply replyID: MessageID, seq: UInt32, modid: Int32,
                                 cmdid: Int32) throws -> GetHostResult {
        let destination = address(modid: modid, cmdid: cmdid)
        send(frame, to: destination)
        let response = try receive(from: destination) { id, body -> Lars_GetHostResponse? in
            guard id == replyID.rawValue,
                  let r = try? Lars_GetHostResponse(serializedBytes: body.bytes), r.seq == seq else { return nil }
            return r
        }
        return try GetHostResult(response)
    }

    /// A host for every query in one datagram (ids 104/105), in the order of `queries`; blocks up to `timeout`.
    /// Same rules and errors as `LoadBalanceClient.getHosts(_:)`.
    public func getHosts(_ queries: [HostQuery]) throws -> [GetHostResult] {
        sequence &+= 1
        let seq = sequence
        let frame = try AgentRequests.getHostBatch(seq: seq, queries: queries)
        let destination = address(modid: queries[0].modid, cmdid: queries[0].cmdid)
        send(frame, to: destination)
        let response = try receive(from: destination) { id, body -> Switchyard_Lb_GetHostBatchResponse? in
            guard id == MessageID.getHostBatchResponse.rawValue,
                  let r = try? Switchyard_Lb_GetHostBatchResponse(serializedBytes: body.bytes), r.seq == seq
            else { return nil }
            return r
        }
        return try AgentRequests.results(of: response, for: queries)
    }

    /// Tells the agent how a call to `host` went (retcode 0: success). Fire and forget.
    public func report(modid: Int32, cmdid: Int32, host: Host, retcode: Int32) {
        guard let frame = AgentRequests.report(modid: modid, cmdid: cmdid, host: host, retcode: retcode,
                                                secret: reportSecret) else { return }
        send(frame, to: address(modid: modid, cmdid: cmdid))
    }

    /// Tells the agent whether a call to `host` succeeded. Fire and forget.
    public func report(modid: Int32, cmdid: Int32, host: Host, success: Bool) {
        report(modid: modid, cmdid: cmdid, host: host, retcode: success ? 0 : 1)
    }

    /// The hosts of (modid, cmdid) as the agent knows them; blocks up to `timeout`.
    public func getRoute(modid: Int32, cmdid: Int32) throws -> [Host] {
        let destination = address(modid: modid, cmdid: cmdid)
        send(try AgentRequests.getRoute(modid: modid, cmdid: cmdid), to: destination)
        let response = try receive(from: destination) { id, body -> Lars_GetRouteResponse? in
            guard id == MessageID.apiGetRouteResponse.rawValue,
                  let r = try? Lars_GetRouteResponse(serializedBytes: body.bytes), r.modid == modid, r.cmdid == cmdid
            else { return nil }
            return r
        }
        return AgentRequests.hosts(of: response)
    }
}
