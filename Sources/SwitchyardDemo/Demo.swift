#if canImport(Glibc)
import Glibc
#endif
import Dispatch
import LoadBalanceAgent
import LoadBalanceClient
import LoadBalancing
import NameService
import Logging
import Reactor
import Reporter
import ServiceLifecycle
import UnixSignals
import RouteStore
import Storage
import SwitchyardCore
import Synchronization

/// Settings of the ``LoadBalanceDemo``.
public struct DemoConfiguration: Sendable {
    /// How long the demo runs. The phases scale with it: all backends healthy for the first quarter, one refuses
    /// connections from 25 % to 55 %, then it recovers.
    public var duration: Duration
    /// True for a terminal: the table is redrawn in place (ANSI home and clear). False: plain periodic lines.
    public var interactive: Bool
    /// Backend echo servers registered as the one route (modid 1, cmdid 1).
    public var backends: Int

    /// Creates a configuration (40 s, plain output, three backends).
    public init(duration: Duration = .seconds(40), interactive: Bool = false, backends: Int = 3) {
        precondition(backends >= 2, "the demo needs at least two backends")
        self.duration = duration
        self.interactive = interactive
        self.backends = backends
    }
}

/// What the demo saw, per backend.
public struct DemoHostSummary: Sendable, Hashable {
    /// The backend.
    public var host: Host
    /// Calls the client made to it, and how many failed.
    public var calls: Int
    public var failures: Int
    /// Its state changes as the agent saw them, with the second they were seen.
    public var transitions: [(seconds: Double, state: HostHealth)]

    public static func == (a: Self, b: Self) -> Bool {
        a.host == b.host && a.calls == b.calls && a.failures == b.failures
            && a.transitions.map(\.seconds) == b.transitions.map(\.seconds)
            && a.transitions.map(\.state) == b.transitions.map(\.state)
    }

    public func hash(into hasher: inout Hasher) { hasher.combine(host) }
}

/// The demo's outcome.
public struct DemoSummary: Sendable {
    /// Seconds it ran.
    public var seconds: Double
    /// Per backend, in route order.
    public var hosts: [DemoHostSummary]
    /// The backend that was made to fail.
    public var failingHost: Host?
    /// Reports the reporter wrote to ServerCallStatus.
    public var reportsWritten: Int
    /// True when stopped early (Ctrl-C).
    public var interrupted: Bool
}

/// The whole load-balancing system in one process, for a newcomer to watch: on a temporary SQLite file, a name
/// service, a reporter, an agent, three backend echo servers registered as route (1, 1) with ``RouteAdmin``, and a
/// client loop doing getHost -> a real TCP request to the chosen backend -> report. After a quarter of the run one
/// backend starts refusing connections; later it recovers. A table shows each backend's state as the agent sees it
/// (idle / OVERLOADED), its share of the calls, and the transitions as they happen.
///
/// Every service binds 127.0.0.1 on a port the kernel picks. Safe to call from any thread.
public final class LoadBalanceDemo: Sendable {
    /// The settings.
    public let configuration: DemoConfiguration
    private let group: EventLoopGroup
    private let logger: Logger
    private let output: @Sendable (String) -> Void
    private let stopRequested = Atomic<Bool>(false)
    private let key = RouteKey(modid: 1, cmdid: 1)

    /// Prepares the demo on `group` (services and backends share its loops); `output` receives each piece of
    /// text to print, already formatted (with ANSI sequences when interactive).
    public init(group: EventLoopGroup, configuration: DemoConfiguration = DemoConfiguration(), logger: Logger,
                output: @escaping @Sendable (String) -> Void) {
        self.group = group
        self.configuration = configuration
        self.logger = logger
        self.output = output
    }

    /// Ends the run early (the summary is still printed). Safe from any thread, a signal handler's loop included.
    public func stop() { stopRequested.store(true, ordering: .relaxed) }

    /// ``stop()`` was called.
    var stopWasRequested: Bool { stopRequested.load(ordering: .relaxed) }

    /// Runs the demo to its end (or ``stop()``, or one of `signals`, which end it early), then stops the services in
    /// reverse order (the agent sends its last reports, the reporter writes them, then the name service and the
    /// backends stop), prints and returns the summary. Throws when a service cannot start.
    public func run(stoppingOn signals: [UnixSignal] = []) async throws -> DemoSummary {
        let path = Self.temporaryPath()
        defer { for suffix in ["", "-wal", "-shm"] { unlink(path + suffix) } }
        let pool = try ConnectionPool(url: "sqlite:" + path, configuration: PoolConfiguration(minConnections: 1),
                                      logger: logger)
        do {
            let summary = try await run(pool: pool, signals: signals)
            await pool.close()
            return summary
        } catch {
            await pool.close()
            throw error
        }
    }

    private func run(pool: ConnectionPool, signals: [UnixSignal]) async throws -> DemoSummary {
        try await RouteSchema.create(on: pool)

        // Backends: echo servers that can be told to refuse (accept and close at once).
        var backends: [DemoBackend] = []
        for _ in 0..<configuration.backends {
            let backend = DemoBackend(group: group, logger: logger)
            backends.append(backend)
            let address = try backend.start()
            try await RouteAdmin.addHost(Host(ip: address.ip, port: address.port), to: key, on: pool)
        }
        let hosts = backends.map(\.host)

        let names = NameService(group: group, configuration: NameServiceConfiguration(port: 0,
                                pollInterval: .milliseconds(200)), pool: pool, logger: logger)
        let namesAddress = try names.start()
        let reporter = Reporter(group: group, configuration: ReporterConfiguration(port: 0), pool: pool,
                                logger: logger)
        let reporterAddress = try reporter.start()
        let agent = LoadBalanceAgent(
            group: group,
            configuration: AgentConfiguration(
                ports: [0, 0, 0], nameServicePort: Int(namesAddress.port), reporterPort: Int(reporterAddress.port),
                reportInterval: .seconds(1)),
            logger: logger)
        let agentAddresses = try agent.start()
        let client = try LoadBalanceClient(agentPorts: agentAddresses.map { Int($0.port) }, timeout: .milliseconds(500),
                                           loop: group.next())
        let state = DemoState.Shared(DemoState(hosts: hosts))
        let driver = DemoDriver(demo: self, agent: agent, client: client, backends: backends, state: state)

        // One group, started in order and stopped in reverse: the driver first (its end, or a signal, stops the
        // group), then the agent (sends its last reports), the reporter (writes them), the name service, the backends.
        let services: [any Service] = backends + [names, reporter, agent]
        let group = ServiceGroup(configuration: ServiceGroupConfiguration(
            services: services.map { ServiceGroupConfiguration.ServiceConfiguration(service: $0) }
                + [ServiceGroupConfiguration.ServiceConfiguration(service: driver,
                                                                   successTerminationBehavior: .gracefullyShutdownGroup)],
            gracefulShutdownSignals: signals,
            logger: logger))
        output(header(names: namesAddress, reporter: reporterAddress, agent: agentAddresses, hosts: hosts))
        try await group.run()
        await client.shutdown()

        let written = reporter.statistics.written
        // Lars's semantics (PROTOCOL.md): each row holds the agent's last report for the host, the running counts of
        // the host's current window (idle window or overload period), overwritten by every report; one agent, so
        // one row per host.
        let status = (try? await pool.query(
            "SELECT ip, port, succ_cnt, err_cnt FROM ServerCallStatus WHERE modid = ? AND cmdid = ? AND caller = ?",
            [SQLValue(key.modid), SQLValue(key.cmdid), .integer(Int64(agent.configuration.caller))]).rows) ?? []
        let summary = state.withLock { s in
            DemoSummary(seconds: driver.elapsed.withLock { $0 }, hosts: hosts.map { s.summary(of: $0) },
                        failingHost: backends[1].host, reportsWritten: written, interrupted: driver.interrupted)
        }
        var stored: [Host: (Int64, Int64)] = [:]
        for row in status {
            if let ip = try? row.decode(0, as: UInt32.self), let port = try? row.decode(1, as: Int.self),
               let port16 = UInt16(exactly: port) {
                stored[Host(ip: ip, port: port16)] = ((try? row.decode(2, as: Int64.self)) ?? 0,
                                                      (try? row.decode(3, as: Int64.self)) ?? 0)
            }
        }
        output(Self.render(summary, stored: stored))
        return summary
    }

    /// The timeline: the client's calls in a child task, the failure and the recovery at their times, the live
    /// table. Returns the seconds it ran.
    fileprivate func drive(agent: LoadBalanceAgent, client: LoadBalanceClient, failing: DemoBackend, hosts: [Host],
                           state: DemoState.Shared) async -> Double {
        await withTaskGroup(of: Void.self) { calls in
            calls.addTask { await self.callLoop(client: client, state: state) }
            defer { calls.cancelAll() }
            return await timeline(agent: agent, failing: failing, hosts: hosts, state: state)
        }
    }

    private func timeline(agent: LoadBalanceAgent, failing: DemoBackend, hosts: [Host],
                          state: DemoState.Shared) async -> Double {
        let start = ContinuousClock.now
        let total = configuration.duration
        let failAt = total * 0.25
        let recoverAt = total * 0.55
        let tick: Duration = configuration.interactive ? .milliseconds(250) : .seconds(1)
        var nextTick = start + tick
        var phase = 0
        while !stopRequested.load(ordering: .relaxed) {
            let elapsed = ContinuousClock.now - start
            if elapsed >= total { break }
            let t = elapsed.secondsValue
            if phase == 0 && elapsed >= failAt {
                phase = 1
                failing.refusing.set(true)
                state.withLock { $0.event(t, "\(failing.host) starts refusing connections (its calls fail)") }
            } else if phase == 1 && elapsed >= recoverAt {
                phase = 2
                failing.refusing.set(false)
                state.withLock { $0.event(t, "\(failing.host) recovers (serves again)") }
            }
            if let balancer = await agent.balancerSnapshot(modid: key.modid, cmdid: key.cmdid) {
                let overloaded = Set(balancer.overloadedHosts)
                state.withLock { s in
                    for host in hosts where balancer.hosts.contains(host) {
                        s.observe(host, overloaded.contains(host) ? .overloaded : .idle, at: t)
                    }
                }
            }
            if ContinuousClock.now >= nextTick {
                nextTick = nextTick + tick
                let phaseText = ["all backends healthy", "\(failing.host) refusing", "\(failing.host) recovered"][phase]
                let text = state.withLock { s -> String in
                    defer { s.resetWindow() }
                    return configuration.interactive
                        ? s.table(seconds: t, total: total.secondsValue, phase: phaseText)
                        : s.line(seconds: t)
                }
                output(text)
            }
            try? await Task.sleep(for: .milliseconds(50))
        }
        return (ContinuousClock.now - start).secondsValue
    }

    /// getHost -> TCP request to the backend -> report, as fast as the answers come (with a short pause on
    /// errors), until cancelled.
    fileprivate func callLoop(client: LoadBalanceClient, state: DemoState.Shared) async {
        let payload: [UInt8] = Array("switchyard demo\n".utf8)
        while !Task.isCancelled {
            let result: GetHostResult
            do {
                result = try await client.getHost(modid: key.modid, cmdid: key.cmdid)
            } catch {
                state.withLock { $0.agentErrors += 1 }
                try? await Task.sleep(for: .milliseconds(50))
                continue
            }
            guard let host = result.host else {
                // NOEXIST while the agent fetches the route; OVERLOAD when every host is overloaded.
                state.withLock { $0.noHost += 1 }
                try? await Task.sleep(for: .milliseconds(20))
                continue
            }
            let ok = DemoBackend.call(host, payload)
            client.report(modid: key.modid, cmdid: key.cmdid, host: host, success: ok)
            state.withLock { $0.record(host, ok: ok) }
            try? await Task.sleep(for: .milliseconds(2))
        }
    }

    private func header(names: SocketAddress, reporter: SocketAddress, agent: [SocketAddress], hosts: [Host])
        -> String
    {
        let lines = [
            "switchyard demo: name service \(names), reporter \(reporter), agent udp "
                + agent.map { "\($0.port)" }.joined(separator: ","),
            "route 1/1: backends " + hosts.map(\.description).joined(separator: ", ")
                + " (registered with RouteAdmin in a temporary SQLite file)",
            "client loop: getHost -> TCP echo to the chosen backend -> report; "
                + "\(Int(configuration.duration.secondsValue)) s, one backend fails from "
                + "\(Self.format(configuration.duration.secondsValue * 0.25)) s to "
                + "\(Self.format(configuration.duration.secondsValue * 0.55)) s",
        ]
        return lines.joined(separator: "\n")
    }

    static func render(_ summary: DemoSummary, stored: [Host: (Int64, Int64)]) -> String {
        let calls = summary.hosts.reduce(0) { $0 + $1.calls }
        var lines = ["", "summary: \(calls) calls in \(format(summary.seconds)) s"
            + (summary.interrupted ? " (stopped early)" : "")]
        for host in summary.hosts {
            let share = calls > 0 ? host.calls * 100 / calls : 0
            let changes = host.transitions.map { "\($0.state == .overloaded ? "OVERLOADED" : "idle") at \(format($0.seconds)) s" }
            let db = stored[host.host].map { " | its window in ServerCallStatus: succ \($0.0) err \($0.1)" } ?? ""
            lines.append("  \(pad(host.host.description, 21)) \(host.calls) calls (\(share)%), "
                + "\(host.failures) failed; " + (changes.isEmpty ? "idle throughout" : changes.joined(separator: ", "))
                + db)
        }
        if let failing = summary.failingHost, let host = summary.hosts.first(where: { $0.host == failing }) {
            let wentOver = host.transitions.contains { $0.state == .overloaded }
            let cameBack = host.transitions.last?.state == .idle && wentOver
            lines.append("  \(failing): " + (wentOver ? "went to overload" : "never went to overload")
                + (cameBack ? ", was probed and came back to idle" : wentOver ? ", still overloaded at the end" : ""))
        }
        lines.append("  reporter wrote \(summary.reportsWritten) reports to ServerCallStatus")
        return lines.joined(separator: "\n")
    }

    static func format(_ seconds: Double) -> String {
        let tenths = Int((seconds * 10).rounded())
        return "\(tenths / 10).\(tenths % 10)"
    }

    static func pad(_ text: String, _ width: Int) -> String {
        text.count >= width ? text : text + String(repeating: " ", count: width - text.count)
    }

    private static func temporaryPath() -> String {
        let dir = getenv("TMPDIR").map { String(cString: $0) } ?? "/tmp"
        return "\(dir)/switchyard-demo-\(getpid())-\(UInt32.random(in: 0...UInt32.max)).sqlite"
    }
}

/// The demo's timeline as the last service of its group: it drives the calls and the failure, and when it ends (its
/// time is up, ``LoadBalanceDemo/stop()``, or the group's graceful shutdown on a signal) the group stops the others.
private final class DemoDriver: Service, Sendable {
    let demo: LoadBalanceDemo
    let agent: LoadBalanceAgent
    let client: LoadBalanceClient
    let backends: [DemoBackend]
    let state: DemoState.Shared
    /// Seconds the timeline ran.
    let elapsed = Mutex<Double>(0)
    private let stoppedEarly = Atomic<Bool>(false)

    init(demo: LoadBalanceDemo, agent: LoadBalanceAgent, client: LoadBalanceClient, backends: [DemoBackend],
         state: DemoState.Shared) {
        self.demo = demo
        self.agent = agent
        self.client = client
        self.backends = backends
        self.state = state
    }

    /// The run ended before its time (a signal or `stop()`).
    var interrupted: Bool { stoppedEarly.load(ordering: .relaxed) || demo.stopWasRequested }

    func run() async throws {
        let seconds = await withGracefulShutdownHandler {
            await demo.drive(agent: agent, client: client, failing: backends[1], hosts: backends.map(\.host),
                             state: state)
        } onGracefulShutdown: { [self] in
            stoppedEarly.store(true, ordering: .relaxed)
            demo.stop()
        }
        elapsed.withLock { $0 = seconds }
    }
}

/// The demo's counters and the agent's view of each backend. Guarded by a Mutex.
struct DemoState {
    /// The state behind a lock, shared by the client task and the display loop.
    final class Shared: Sendable {
        private let mutex: Mutex<DemoState>
        init(_ state: DemoState) { mutex = Mutex(state) }
        func withLock<T>(_ body: (inout DemoState) -> T) -> T { mutex.withLock { body(&$0) } }
    }

    struct PerHost {
        var calls = 0
        var failures = 0
        var windowCalls = 0
        var windowFailures = 0
        var state: HostHealth = .idle
        var transitions: [(seconds: Double, state: HostHealth)] = []
    }

    let hosts: [Host]
    var perHost: [Host: PerHost] = [:]
    var events: [String] = []
    var noHost = 0
    var agentErrors = 0

    init(hosts: [Host]) {
        self.hosts = hosts
        for host in hosts { perHost[host] = PerHost() }
    }

    mutating func record(_ host: Host, ok: Bool) {
        perHost[host, default: PerHost()].calls += 1
        perHost[host, default: PerHost()].windowCalls += 1
        if !ok {
            perHost[host, default: PerHost()].failures += 1
            perHost[host, default: PerHost()].windowFailures += 1
        }
    }

    mutating func observe(_ host: Host, _ state: HostHealth, at seconds: Double) {
        guard var entry = perHost[host], entry.state != state else { return }
        entry.state = state
        entry.transitions.append((seconds, state))
        perHost[host] = entry
        let from = state == .overloaded ? "idle" : "overloaded"
        event(seconds, "\(host) \(from) -> \(state.rawValue)"
            + (state == .overloaded ? " (the agent now only probes it)" : " (probes succeeded)"))
    }

    mutating func event(_ seconds: Double, _ text: String) {
        events.append("t=\(LoadBalanceDemo.format(seconds))s \(text)")
    }

    mutating func resetWindow() {
        for host in hosts {
            perHost[host]?.windowCalls = 0
            perHost[host]?.windowFailures = 0
        }
    }

    /// One plain line per tick, with the events since the last one on lines of their own before it.
    mutating func line(seconds: Double) -> String {
        let windowTotal = max(1, hosts.reduce(0) { $0 + (perHost[$1]?.windowCalls ?? 0) })
        var out = events.map { "  event: " + $0 }
        events.removeAll()
        let cells = hosts.map { host -> String in
            let h = perHost[host] ?? PerHost()
            return "\(host) \(h.state == .overloaded ? "OVERLOADED" : "idle") \(h.windowCalls * 100 / windowTotal)%"
                + (h.windowFailures > 0 ? " (\(h.windowFailures) failed)" : "")
        }
        out.append("t=\(LoadBalanceDemo.format(seconds))s  " + cells.joined(separator: " | "))
        return out.joined(separator: "\n")
    }

    /// The full-screen table (ANSI home + clear first).
    func table(seconds: Double, total: Double, phase: String) -> String {
        let windowTotal = max(1, hosts.reduce(0) { $0 + (perHost[$1]?.windowCalls ?? 0) })
        let allCalls = hosts.reduce(0) { $0 + (perHost[$1]?.calls ?? 0) }
        var out = ["\u{1B}[H\u{1B}[2J"
            + "switchyard demo  t=\(LoadBalanceDemo.format(seconds))s of \(LoadBalanceDemo.format(total))s  "
            + "(\(phase))  Ctrl-C stops",
            "",
            "host                   state        share now   calls   failed",
        ]
        for host in hosts {
            let h = perHost[host] ?? PerHost()
            let state = h.state == .overloaded ? "OVERLOADED" : "idle"
            out.append(LoadBalanceDemo.pad(host.description, 23) + LoadBalanceDemo.pad(state, 13)
                + LoadBalanceDemo.pad("\(h.windowCalls * 100 / windowTotal)%", 12)
                + LoadBalanceDemo.pad(String(h.calls), 8) + String(h.failures))
        }
        out.append("")
        out.append("\(allCalls) calls; idle hosts share the calls round robin, an overloaded one only gets probes")
        out.append("")
        out.append("events:")
        out += events.suffix(10).map { "  " + $0 }
        return out.joined(separator: "\n")
    }

    func summary(of host: Host) -> DemoHostSummary {
        let h = perHost[host] ?? PerHost()
        return DemoHostSummary(host: host, calls: h.calls, failures: h.failures, transitions: h.transitions)
    }
}

/// A backend echo server that can be told to refuse: while `refusing`, each connection is closed as soon as it
/// is accepted, so the caller's request fails.
final class DemoBackend: Service, Sendable {
    /// Set while the backend refuses.
    final class Flag: Sendable {
        private let value = Atomic<Bool>(false)
        var isOn: Bool { value.load(ordering: .relaxed) }
        func set(_ on: Bool) { value.store(on, ordering: .relaxed) }
    }

    let refusing = Flag()
    private let server: TCPServer
    private let address = Mutex<SocketAddress?>(nil)

    init(group: EventLoopGroup, logger: Logger) {
        let refusing = self.refusing
        server = TCPServer(group: group, configuration: ServerConfiguration(port: 0),
                           callbacks: ConnectionCallbacks(
                               onConnect: { connection in if refusing.isOn { connection.forceClose() } },
                               onData: { connection, bytes in connection.sendInLoop(bytes.consumeAll()) },
                               onClose: { _ in }), logger: logger)
    }

    func start() throws -> SocketAddress {
        let bound = try server.start()
        address.withLock { $0 = bound }
        return bound
    }

    var host: Host {
        let a = address.withLock { $0 }!
        return Host(ip: a.ip, port: a.port)
    }

    /// Serves until the group's graceful shutdown, then drains its connections.
    func run() async throws {
        try? await gracefulShutdown()
        await server.shutdown(timeout: .seconds(1))
    }

    /// One request: connect, send `payload`, read it back (500 ms timeout). Blocking; a few hundred microseconds
    /// on loopback.
    static func call(_ host: Host, _ payload: [UInt8]) -> Bool {
        guard let fd = try? Posix.blockingSocket(type: Int32(SOCK_STREAM.rawValue)) else { return false }
        defer { Posix.close(fd) }
        try? Posix.setTimeout(fd, option: SO_RCVTIMEO, .milliseconds(500))
        try? Posix.setTimeout(fd, option: SO_SNDTIMEO, .milliseconds(500))
        guard case .processed? = try? Posix.connect(fd, to: SocketAddress(ip: host.ip, port: host.port)) else {
            return false
        }
        let sent = payload.withUnsafeBytes { try? Posix.send(fd, $0) }
        guard sent == .processed(payload.count) else { return false }
        var reply = [UInt8](repeating: 0, count: payload.count)
        var got = 0
        while got < payload.count {
            let received = reply.withUnsafeMutableBytes {
                try? Posix.receive(fd, into: UnsafeMutableRawBufferPointer(rebasing: $0[got...]))
            }
            guard case .processed(let n)? = received, n > 0 else { return false }
            got += n
        }
        return reply == payload
    }
}

