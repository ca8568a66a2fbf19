import Reactor
import SwitchyardCore

/// One listener of a proxy: connections to `port` go to a host of (modid, cmdid).
public struct ProxyRoute: Sendable, Hashable, CustomStringConvertible {
    /// The port to listen on (0: the kernel picks).
    public var port: Int
    public var modid: Int32
    public var cmdid: Int32

    public init(port: Int, modid: Int32, cmdid: Int32) {
        self.port = port
        self.modid = modid
        self.cmdid = cmdid
    }

    /// Parses "PORT:MODID:CMDID"; nil when malformed.
    public init?(_ text: String) {
        let parts = text.split(separator: ":", omittingEmptySubsequences: false)
        guard parts.count == 3, let port = Int(parts[0]), let modid = Int32(parts[1]), let cmdid = Int32(parts[2])
        else { return nil }
        self.init(port: port, modid: modid, cmdid: cmdid)
    }

    public var description: String { "\(port):\(modid):\(cmdid)" }
}

/// How the proxy asks the agent for a connection's backend.
public enum ProxyAffinity: String, Sendable, CaseIterable, CustomStringConvertible {
    /// The agent's own order for every connection (Lars's GetHost).
    case none
    /// The client's IP address is the key (GetHost by key: consistent hashing with bounded loads), so a client
    /// keeps its backend while that backend has room.
    case clientIP = "client-ip"

    public var description: String { rawValue }
}

/// The PROXY protocol header sent to a backend before the client's bytes (HAProxy's specification), so the
/// backend learns the client's address.
public enum ProxyHeaderVersion: String, Sendable, CaseIterable, CustomStringConvertible {
    /// "PROXY TCP4 client proxy cport pport\r\n".
    case v1
    /// The binary header: signature, version 2 PROXY command, TCP over IPv4, the two addresses and ports.
    case v2

    public var description: String { rawValue }
}

/// Settings of a ``ProxyServer``.
public struct ProxyConfiguration: Sendable {
    /// Address the listeners bind to (default 0.0.0.0).
    public var host: String
    /// One listener per route (at least one).
    public var routes: [ProxyRoute]
    /// The local load-balancing agent (default 127.0.0.1, ports 8888, 8889, 8890).
    public var agentHost: String
    public var agentPorts: [Int]
    /// How long the agent may take to answer a GetHost. Default 500 ms.
    public var agentTimeout: Duration
    /// Default `.none`.
    public var affinity: ProxyAffinity
    /// Most client connections at once (over every route); more are closed at once, logged once per episode.
    /// Default 10,000.
    public var maxConnections: Int
    /// A backend that has not accepted the connection within this long is a failed connect. Default 2 s.
    public var connectTimeout: Duration
    /// Backends tried for one client connection: after a failed connect (reported to the agent as a failure),
    /// the agent is asked again, up to this many hosts. Default 3.
    public var connectAttempts: Int
    /// A connection with no byte moving either way for this long is closed (both sides reset). Nil: never.
    /// Default 300 s.
    public var idleTimeout: Duration?
    /// On shutdown, open connections may finish for this long before they are closed. Default 30 s.
    public var drainTimeout: Duration
    /// PROXY protocol header to the backends; nil (default) sends none.
    public var sendProxy: ProxyHeaderVersion?
    /// How bytes move between the sockets (default auto: copy for small reads, splice for bulk).
    public var transfer: TunnelTransfer
    /// Bytes in flight per direction of a connection (backpressure bound). Default 64 KiB.
    public var bufferBytes: Int
    /// Sent with every report when the agent requires it (`--report-secret`).
    public var reportSecret: [UInt8]?
    /// Hosts each loop asks of the agent ahead of the connections that will use them, per route (``SpareHosts``):
    /// a new client connects at once to a host the agent picked a moment ago, so the agent's round trip is off the
    /// connection's path; once half are used the missing ones are asked for in one batch GetHost. Still one pick
    /// per connection; never with `--affinity client-ip`. 0 asks when the client comes. The most kept: each route's
    /// target follows its connection rate from 4 up to this (``SpareHosts``). Default 32.
    public var spareHosts: Int
    /// A spare host older than this is not used (an idle proxy asks again). Default 1 s.
    public var spareHostMaxAge: Duration

    public init(host: String = "0.0.0.0", routes: [ProxyRoute], agentHost: String = "127.0.0.1",
                agentPorts: [Int] = [8888, 8889, 8890], agentTimeout: Duration = .milliseconds(500),
                affinity: ProxyAffinity = .none, maxConnections: Int = 10_000, connectTimeout: Duration = .seconds(2),
                connectAttempts: Int = 3, idleTimeout: Duration? = .seconds(300), drainTimeout: Duration = .seconds(30),
                sendProxy: ProxyHeaderVersion? = nil, transfer: TunnelTransfer = .auto, bufferBytes: Int = 64 << 10,
                reportSecret: [UInt8]? = nil, spareHosts: Int = 32, spareHostMaxAge: Duration = .seconds(1)) {
        self.host = host
        self.routes = routes
        self.agentHost = agentHost
        self.agentPorts = agentPorts
        self.agentTimeout = agentTimeout
        self.affinity = affinity
        self.maxConnections = maxConnections
        self.connectTimeout = connectTimeout
        self.connectAttempts = connectAttempts
        self.idleTimeout = idleTimeout
        self.drainTimeout = drainTimeout
        self.sendProxy = sendProxy
        self.transfer = transfer
        self.bufferBytes = bufferBytes
        self.reportSecret = reportSecret
        self.spareHosts = spareHosts
        self.spareHostMaxAge = spareHostMaxAge
    }

    /// Throws ``ProxyError/invalidConfiguration(_:)`` naming the first setting out of range.
    public func validate() throws(ProxyError) {
        func check(_ ok: Bool, _ text: @autoclosure () -> String) throws(ProxyError) {
            if !ok { throw .invalidConfiguration(text()) }
        }
        try check(!routes.isEmpty, "at least one route (PORT:MODID:CMDID) is needed")
        for route in routes {
            try check((0...65535).contains(route.port), "route \(route): port out of range")
        }
        let fixed = routes.map(\.port).filter { $0 != 0 }
        try check(Set(fixed).count == fixed.count, "two routes listen on one port")
        try check(SocketAddress.parseIPv4(host) != nil, "host \(host) is not an IPv4 address")
        try check(SocketAddress.parseIPv4(agentHost) != nil, "agent host \(agentHost) is not an IPv4 address")
        try check(!agentPorts.isEmpty && agentPorts.allSatisfy { (1...65535).contains($0) },
                  "agent ports must be 1...65535, at least one")
        try check(agentTimeout > .zero, "agent timeout must be positive")
        try check(maxConnections >= 1, "max connections must be at least 1")
        try check(connectTimeout > .zero, "connect timeout must be positive")
        try check((1...16).contains(connectAttempts), "connect attempts must be 1...16")
        try check(idleTimeout.map { $0 > .zero } ?? true, "idle timeout must be positive")
        try check(drainTimeout >= .zero, "drain timeout must not be negative")
        try check((4096...(16 << 20)).contains(bufferBytes), "buffer bytes must be 4 KiB...16 MiB")
        try check((0...64).contains(spareHosts), "spare hosts must be 0...64")
        try check(spareHostMaxAge > .zero, "the spare hosts' age bound must be positive")
    }
}

/// Errors of the proxy.
public enum ProxyError: Error, Sendable, Equatable, CustomStringConvertible {
    /// A setting is out of range; the text names it.
    case invalidConfiguration(String)
    /// ``ProxyServer/start()`` or ``ProxyServer/run()`` was called twice.
    case alreadyStarted

    public var description: String {
        switch self {
        case .invalidConfiguration(let text): return "invalid proxy configuration: \(text)"
        case .alreadyStarted: return "the proxy is started already"
        }
    }
}
