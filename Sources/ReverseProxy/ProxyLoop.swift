#if canImport(Glibc)
import Glibc
#endif
import Dispatch
import LoadBalanceClient
import LoadBalancing
import Logging
import Metrics
import Reactor
import ServiceLifecycle
import SwitchyardCore
import Synchronization

/// The proxy's state on one I/O loop: its agent client and its open connections. Loop thread only.
final class ProxyLoop: @unchecked Sendable {
    // @unchecked Sendable: touched on `loop` only; crosses threads inside LoopBound or the loop's own tasks.
    let loop: EventLoop
    let agent: LoopLoadBalanceClient
    var connections: [UInt64: ProxyConnection] = [:]
    /// Hosts asked for ahead, per module of a route.
    var spares: [ModuleKey: SpareHosts] = [:]
    /// A task to ask for the missing spares is posted (it runs after the loop iteration's events).
    var refillPosted = false
    /// Spare hosts are asked for in batch GetHost requests (a Switchyard agent answers them); false once one was
    /// refused, or went unanswered before any was answered.
    var agentAnswersBatches = true
    var agentAnsweredBatch = false

    /// A fresh spare host of the route's module, if one is in hand (its spares made on first use).
    func takeSpare(for route: ProxyRoute, now: UInt64, limit: Int, maxAge: Duration) -> Host? {
        let key = ModuleKey(modid: route.modid, cmdid: route.cmdid)
        var spare = spares[key] ?? SpareHosts(limit: limit, maxAgeNanoseconds: maxAge.nanosecondsSaturated)
        let host = spare.take(now: now)
        spares[key] = spare
        return host
    }

    init(loop: EventLoop, agent: LoopLoadBalanceClient) {
        self.loop = loop
        self.agent = agent
    }

    /// The drain timeout passed: every connection ends now (tunnels close, connects are abandoned).
    func closeAll() {
        for connection in Array(connections.values) { connection.abort() }
    }
}

/// A module of the agent's (a route's modid and cmdid).
struct ModuleKey: Hashable {
    let modid: Int32
    let cmdid: Int32
}

/// One client connection while it is served. Loop thread only.
final class ProxyConnection {
    let id: UInt64
    let socket: AcceptedSocket
    let route: ProxyRoute
    var session: ProxySession
    var dialer: TCPDialer?
    var tunnel: TCPTunnel?
    /// The connected backend's socket between the connect and the tunnel's start.
    var backend: DialedSocket?
    /// The client's descriptor is closed, or owned by the tunnel.
    var clientClosed = false

    init(id: UInt64, socket: AcceptedSocket, route: ProxyRoute, session: ProxySession) {
        self.id = id
        self.socket = socket
        self.route = route
        self.session = session
    }

    /// Ends the connection at once, whatever it is doing: a tunnel closes (and finishes the session), a connect in
    /// progress is abandoned and the client closed.
    func abort() {
        if let tunnel {
            tunnel.close()
            return
        }
        dialer?.cancel()
        dialer = nil
        releaseDescriptors()
    }

    func releaseDescriptors() {
        backend?.close()
        backend = nil
        if !clientClosed { Posix.close(socket.fd) }
        clientClosed = true
    }
}
