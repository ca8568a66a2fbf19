import struct Foundation.Data
import LarsProtocol
import LoadBalancing
import Logging
import Messaging
import Reactor
import ServiceLifecycle
import SwitchyardCore
import Synchronization

/// A state change of a module (the state relay, ``ServiceRegistration/publish(_:)``).
public struct StateChange: Sendable, Hashable {
    /// The module it was published on.
    public let modid: Int32
    /// Its id: increasing in publish order (per publisher, across name services on one database).
    public let id: UInt64
    /// What the publisher sent.
    public let payload: [UInt8]
}

/// A server's registration of itself with the name service (message id 102): "I serve (modid, cmdid) at `host`".
/// Sent on connect and then again whenever a third of `ttl` has passed since the last one (the heartbeat, by the
/// `HeartbeatPolicy` of the framed clients), so the host stays in the route while this process lives and drops out
/// within `ttl` once it stops; `stop()` takes it back at once. Reconnects with backoff when the name
/// service goes away, registering again on every connection. Safe to call from any thread.
///
/// Load: a server that knows its capacity (a relay: viewers) reports its load with every registration and heartbeat
/// (`updateLoad(_:)`); a change of fullness (the load reaching the capacity, or falling below it) is sent at once, so a
/// full host drops out of GetHost by key within a round trip, not a heartbeat. Without `updateLoad` nothing is sent
/// (as an older server: no load information).
///
/// A `Service`: in a `ServiceGroup`, `run()` registers, keeps the heartbeat until the group's graceful shutdown,
/// and takes the registration back on the way out. Without a group, call `start()` and `stop()`:
///
/// ```swift
/// let registration = try ServiceRegistration(loop: group.next(), modid: 7, cmdid: 1,
///                                            host: Host(address: "10.0.0.5", port: 9000)!, ttl: .seconds(10))
/// registration.start()
/// ...
/// registration.stop()
/// ```
public final class ServiceRegistration: Service, Sendable {
    public let key: RouteKey
    public let host: Host
    public let ttl: Duration
    /// The weight sent with every registration (``HostWeight``: the host's share of the route's picks).
    public let weight: UInt32
    /// The module's owner token sent with every registration (nil: none).
    public let token: String?
    private let client: FramedClient
    private let loop: EventLoop
    private let state = Mutex<(timer: TimerHandle?, stopped: Bool)>((nil, false))
    /// The load sent with every registration (nil: none), shared with the connect callback.
    private final class CurrentLoad: Sendable {
        let value = Mutex<HostLoad?>(nil)
    }
    private let currentLoad = CurrentLoad()
    private final class Replies: Sendable {
        let accepted = Atomic<Int>(0)
        let lastRefusal = Mutex<String?>(nil)
    }
    private let replies = Replies()
    /// The state relay: the last change id received (changes at or below it are not handed out again) and the
    /// id of the next publish.
    private final class Relay: Sendable {
        let lastSeen = Mutex<UInt64>(0)
        let nextRequest = Atomic<UInt32>(1)
        let published = Atomic<Int>(0)
        let refusedPublishes = Atomic<Int>(0)
    }
    private let relay = Relay()

    /// - Parameters:
    ///   - nameServiceHost, nameServicePort: The name service (default 127.0.0.1:7778).
    ///   - alternates: Further name services on the same database (replicas): when the current one is lost, or
    ///     answers nothing for `ttl`, the registration moves to the next in turn (it keeps the host registered:
    ///     every replica serves it from the database).
    ///   - ttl: How long the host stays registered without a heartbeat (at least 300 ms).
    ///   - weight: The host's weight, 0...``HostWeight/max`` (default 1; 0 drains it: registered, never picked while
    ///     another host is idle). Sent only when it is not 1, so a name service without weights sees what it knew.
    ///   - token: The module's owner token, when the name service has one for the module (a registration without
    ///     it is refused with a reason).
    ///   - onStateChange: The state relay: called (on the loop) with every change published on this module
    ///     (``publish(_:)``, by any server of the module through any name service on the same database), in id
    ///     order, each once: after a reconnect the name service first sends what was missed (within its retention).
    ///     Nil: not subscribed.
    public init(loop: EventLoop, nameServiceHost: String = "127.0.0.1", nameServicePort: Int = 7778,
                alternates: [ClientEndpoint] = [],
                modid: Int32, cmdid: Int32, host: Host, ttl: Duration = .seconds(10),
                weight: UInt32 = HostWeight.standard,
                token: String? = nil,
                onStateChange: (@Sendable (StateChange) -> Void)? = nil,
                logger: Logger = Logger(label: "switchyard.registration", factory: { _ in SwiftLogNoOpLogHandler() }))
        throws
    {
        precondition(ttl >= .milliseconds(300), "ttl must be at least 300 ms")
        precondition(HostWeight.isValid(Int(weight)), "weight must be 0...\(HostWeight.max)")
        key = RouteKey(modid: modid, cmdid: cmdid)
        self.weight = weight
        self.token = token
        self.host = host
        self.ttl = ttl
        self.loop = loop
        let key = self.key
        let currentLoad = self.currentLoad
        let weight = self.weight
        let token = self.token
        let router = MessageRouter<TCPConnection>()
        let replies = self.replies
        try router.on(MessageID.registerHostResponse, as: Switchyard_Lb_RegisterHostResponse.self) { reply, _ in
            if reply.ok {
                replies.accepted.wrappingAdd(1, ordering: .relaxed)
            } else {
                let known = replies.lastRefusal.withLock { last in
                    defer { last = reply.reason }
                    return last == reply.reason
                }
                if !known { logger.warning("registration refused", metadata: ["reason": "\(reply.reason)"]) }
            }
        }
        let relay = self.relay
        try router.on(MessageID.publishStateResponse, as: Switchyard_Names_PublishStateResponse.self) { reply, _ in
            if reply.ok {
                relay.published.wrappingAdd(1, ordering: .relaxed)
            } else {
                relay.refusedPublishes.wrappingAdd(1, ordering: .relaxed)
                logger.info("state change refused", metadata: ["reason": "\(reply.reason)"])
            }
        }
        if let onStateChange {
            try router.on(MessageID.stateChange, as: Switchyard_Names_StateChange.self) { change, _ in
                let fresh = relay.lastSeen.withLock { last -> Bool in
                    guard change.id > last else { return false }
                    last = change.id
                    return true
                }
                if fresh {
                    onStateChange(StateChange(modid: change.modid, id: change.id, payload: Array(change.payload)))
                }
            }
        }
        let subscribes = onStateChange != nil
        var connection = ClientConfiguration(host: nameServiceHost, port: nameServicePort, reconnect: true)
        connection.alternates = alternates
        client = try FramedClient(
            loop: loop,
            // Every registration is answered: a name service silent for a ttl is left for the next one.
            configuration: FramedClientConfiguration(client: connection, heartbeatInterval: ttl / 3,
                                                     silenceTimeout: alternates.isEmpty ? nil : ttl),
            router: router, logger: logger,
            onConnect: { connection in
                logger.info("registering", metadata: ["route": "\(RouteKey(modid: modid, cmdid: cmdid))",
                                                       "host": "\(host)"])
                let load = currentLoad.value.withLock { $0 }
                connection.send(Self.request(key: key, host: host, ttl: ttl, load: load, weight: weight,
                                             token: token),
                                id: MessageID.registerHostRequest)
                if subscribes {
                    var subscribe = Switchyard_Names_SubscribeState()
                    subscribe.modid = modid
                    let last = relay.lastSeen.withLock { $0 }
                    if last > 0 { subscribe.afterID = last }
                    connection.send(subscribe, id: MessageID.subscribeState)
                }
            })
    }

    /// The state relay: publishes `payload` on this module's topic through the name service connected now; every
    /// server of the module subscribed with `onStateChange` gets it (this one too), in this server's publish
    /// order. False when not connected (nothing is queued). At most 64 KiB; the name service refuses more.
    @discardableResult
    public func publish(_ payload: [UInt8]) -> Bool {
        var request = Switchyard_Names_PublishState()
        request.requestID = relay.nextRequest.wrappingAdd(1, ordering: .relaxed).oldValue
        request.modid = key.modid
        request.payload = Data(payload)
        return client.send(request, id: MessageID.publishState)
    }

    /// State changes this server published that the name service accepted (written).
    public var publishedCount: Int { relay.published.load(ordering: .relaxed) }

    /// The last state change id received.
    public var lastStateChangeID: UInt64 { relay.lastSeen.withLock { $0 } }

    /// Connects and keeps the registration alive. Safe to call from any thread. Does nothing when already started
    /// or once stopped.
    public func start() {
        let (key, host, ttl, weight, token) = (self.key, self.host, self.ttl, self.weight, self.token)
        let currentLoad = self.currentLoad
        let client = self.client
        let loop = self.loop
        let policy = HeartbeatPolicy(interval: ttl / 3)
        let started = state.withLock { s -> Bool in
            guard !s.stopped, s.timer == nil else { return false }
            s.timer = loop.scheduleRepeating(every: policy.checkInterval) {
                guard let connection = client.connection else { return }
                let now = SystemInfo.monotonicNanoseconds()
                if policy.decide(now: now, lastSent: connection.lastSendTime, lastReceived: now) == .sendHeartbeat {
                    let load = currentLoad.value.withLock { $0 }
                    _ = client.send(Self.request(key: key, host: host, ttl: ttl, load: load, weight: weight,
                                                 token: token),
                                    id: MessageID.registerHostRequest)
                }
            }
            return true
        }
        if started { client.connect() }
    }

    /// Takes the registration back (ttl 0) and disconnects; the name service drops the host at once. Idempotent.
    /// When the name service is unreachable at that moment, nothing can be sent: the host then drops out when its
    /// ttl runs out.
    public func stop() {
        let timer = state.withLock { s -> TimerHandle? in
            if s.stopped { return nil }
            s.stopped = true
            return s.timer
        }
        timer?.cancel()
        _ = client.send(Self.request(key: key, host: host, ttl: .zero, weight: weight, token: token),
                        id: MessageID.registerHostRequest)
        client.disconnect()
    }

    /// Registers and keeps the heartbeat until the graceful shutdown of the `ServiceGroup` (or cancellation), then
    /// takes the registration back (ttl 0) and returns once the loop has handed that to the connection, so the
    /// loop may be stopped right after.
    public func run() async throws {
        start()
        try? await gracefulShutdown()
        stop()
        await afterPendingTasks(on: loop)
    }

    /// The load to report from now on (with the next heartbeat); when its fullness differs from the last one
    /// (`load >= capacity`), it is sent at once. Safe to call from any thread; cheap when nothing changes.
    public func updateLoad(_ load: HostLoad) {
        let previous = currentLoad.value.withLock { current in
            defer { current = load }
            return current
        }
        if let previous, previous.isFull == load.isFull { return }
        // Sent from the loop, reading the load there (as the heartbeat and the connect do): whatever the order the
        // threads call in, the last registration sent carries the latest load.
        loop.execute { [self] in
            guard !state.withLock({ $0.stopped }), let load = currentLoad.value.withLock({ $0 }) else { return }
            _ = client.send(Self.request(key: key, host: host, ttl: ttl, load: load, weight: weight,
                                         token: token),
                            id: MessageID.registerHostRequest)
        }
    }

    /// The load reported with the registrations (nil before the first `updateLoad(_:)`).
    public var load: HostLoad? { currentLoad.value.withLock { $0 } }

    /// Registrations (and heartbeats) the name service accepted so far.
    public var acceptedCount: Int { replies.accepted.load(ordering: .relaxed) }

    /// The last reason the name service gave for refusing, if it ever did.
    public var lastRefusalReason: String? { replies.lastRefusal.withLock { $0 } }

    static func request(key: RouteKey, host: Host, ttl: Duration, load: HostLoad? = nil,
                        weight: UInt32 = HostWeight.standard, token: String? = nil)
        -> Switchyard_Lb_RegisterHostRequest
    {
        var request = Switchyard_Lb_RegisterHostRequest()
        request.modid = key.modid
        request.cmdid = key.cmdid
        request.ip = host.wireIP
        request.port = Int32(host.port)
        request.ttlMs = UInt32(clamping: ttl.millisecondsTruncated)
        if let load {
            request.load = load.load
            request.capacity = load.capacity
        }
        if weight != HostWeight.standard { request.weight = weight }
        if let token { request.token = token }
        return request
    }
}

/// Returns once `loop` has run the tasks posted to it before this call (at once when the loop has stopped: a task
/// posted to a stopped loop is released without running, which resumes the caller too).
func afterPendingTasks(on loop: EventLoop) async {
    final class ResumeOnce: Sendable {
        // Resumed exactly once: by the task, or by the release of a task that never ran.
        let continuation: Mutex<CheckedContinuation<Void, Never>?>
        init(_ c: CheckedContinuation<Void, Never>) { continuation = Mutex(c) }
        func resume() { continuation.withLock { c in defer { c = nil }; return c }?.resume() }
        deinit { resume() }
    }
    await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
        let once = ResumeOnce(continuation)
        loop.execute { once.resume() }
    }
}
