import Dispatch
import Foundation
import LoadBalancing
import Logging
import Synchronization

/// A route as the cache file keeps it: its hosts and the weights among them that are not 1.
public struct CachedRoute: Sendable, Hashable {
    public var hosts: [LoadBalancing.Host]
    /// The weights other than ``HostWeight/standard`` (a host without an entry weighs 1).
    public var weights: [LoadBalancing.Host: UInt32]

    public init(hosts: [LoadBalancing.Host], weights: [LoadBalancing.Host: UInt32] = [:]) {
        self.hosts = hosts
        self.weights = weights.filter { $0.value != HostWeight.standard }
    }
}

/// Routes saved on disk, so an agent restarted while the name service is down serves its last known routes, with
/// their weights.
///
/// The file is JSON: `{"routes": [{"modid": 1, "cmdid": 2, "hosts": ["10.0.0.1:9000", ...],
/// "weights": {"10.0.0.1:9000": 3}}, ...]}`; `weights` names only the hosts that do not weigh 1 and is left out
/// when none does (a file written before weights has none: every host weighs 1). Writes go to a temporary file
/// renamed over the old one, so a crash never leaves half a file.
public struct RouteCacheFile: Sendable {
    public let path: String

    public init(path: String) { self.path = path }

    struct Entry: Codable {
        var modid: Int32
        var cmdid: Int32
        var hosts: [String]
        var weights: [String: UInt32]?
    }

    struct Document: Codable {
        var routes: [Entry]
    }

    /// Reads the routes with their weights; an absent file is no routes. Throws on unreadable or malformed contents.
    public func loadRoutes() throws -> [RouteKey: CachedRoute] {
        guard FileManager.default.fileExists(atPath: path) else { return [:] }
        let data = try Data(contentsOf: URL(fileURLWithPath: path))
        let document = try JSONDecoder().decode(Document.self, from: data)
        var out: [RouteKey: CachedRoute] = [:]
        for entry in document.routes {
            var weights: [LoadBalancing.Host: UInt32] = [:]
            for (text, weight) in entry.weights ?? [:] {
                if let host = LoadBalancing.Host(text) { weights[host] = min(weight, HostWeight.max) }
            }
            out[RouteKey(modid: entry.modid, cmdid: entry.cmdid)] = CachedRoute(
                hosts: entry.hosts.compactMap { LoadBalancing.Host($0) }, weights: weights)
        }
        return out
    }

    /// Reads the routes' hosts (``loadRoutes()`` without the weights).
    public func load() throws -> [RouteKey: [LoadBalancing.Host]] {
        try loadRoutes().mapValues(\.hosts)
    }

    /// Writes the routes with their weights atomically (temporary file, then rename).
    public func save(_ routes: [RouteKey: CachedRoute]) throws {
        let entries = routes.sorted { ($0.key.modid, $0.key.cmdid) < ($1.key.modid, $1.key.cmdid) }.map { key, route in
            let weights = route.weights.filter { $0.value != HostWeight.standard }
            return Entry(modid: key.modid, cmdid: key.cmdid, hosts: route.hosts.map(\.description),
                         weights: weights.isEmpty ? nil
                             : Dictionary(uniqueKeysWithValues: weights.map { ($0.key.description, $0.value) }))
        }
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
        let data = try encoder.encode(Document(routes: entries))
        let temporary = path + ".tmp"
        try data.write(to: URL(fileURLWithPath: temporary))
        if rename(temporary, path) != 0 {
            throw CocoaError(.fileWriteUnknown, userInfo: [NSFilePathErrorKey: path])
        }
    }

    /// Writes routes whose hosts all weigh 1.
    public func save(_ routes: [RouteKey: [LoadBalancing.Host]]) throws {
        try save(routes.mapValues { CachedRoute(hosts: $0) })
    }
}

/// Writes the route cache file off the agent's loop, one snapshot at a time. Safe to call from any thread.
///
/// Coalesced, not queued: `submit` replaces the snapshot waiting to be written (if any), so however many snapshots
/// arrive while a write runs, at most one more write follows it, and memory holds at most two snapshots.
final class RouteCacheWriter: Sendable {
    let file: RouteCacheFile
    private let logger: Logger
    private let queue = DispatchQueue(label: "switchyard.agent.route-cache")
    /// Entered while a write is pending or running; shutdown waits on it (bounded).
    private let busy = DispatchGroup()

    private struct State {
        var pending: [RouteKey: CachedRoute]?
        var writing = false
        var writes = 0
        var failures = 0
        var lastFailureLogged = false
    }
    private let state = Mutex(State())

    init(file: RouteCacheFile, logger: Logger) {
        self.file = file
        self.logger = logger
    }

    /// Files written so far.
    var writes: Int { state.withLock { $0.writes } }

    /// Hands over the routes to write; replaces a snapshot not yet written. A failure is logged once until a write
    /// succeeds again (the agent goes on serving).
    func submit(_ routes: [RouteKey: CachedRoute]) {
        let start = state.withLock { s -> Bool in
            s.pending = routes
            if s.writing { return false }
            s.writing = true
            return true
        }
        guard start else { return }
        busy.enter()
        queue.async { [self] in writeUntilIdle() }
    }

    private func writeUntilIdle() {
        while let routes = state.withLock({ s -> [RouteKey: CachedRoute]? in
            defer { s.pending = nil }
            if s.pending == nil { s.writing = false }
            return s.pending
        }) {
            do {
                try file.save(routes)
                state.withLock { s in
                    s.writes += 1
                    s.lastFailureLogged = false
                }
            } catch {
                let log = state.withLock { s -> Bool in
                    s.failures += 1
                    defer { s.lastFailureLogged = true }
                    return !s.lastFailureLogged
                }
                if log {
                    logger.info("cannot save the route cache", metadata: ["file.path": "\(file.path)",
                                                                         "error": "\(error)"])
                }
            }
        }
        busy.leave()
    }

    /// Returns once nothing is pending or being written, or after `timeout`; true when the writes were done.
    func flush(timeout: Duration) async -> Bool {
        await withCheckedContinuation { (continuation: CheckedContinuation<Bool, Never>) in
            let once = ResumeOnce(continuation, ifReleased: false)
            busy.notify(queue: .global()) { once.resume(returning: true) }
            DispatchQueue.global().asyncAfter(deadline: .now() + timeout.timeInterval) {
                once.resume(returning: false)
            }
        }
    }

    /// Waits until nothing is pending or being written, at most `timeout`; true when the writes were done. Blocks
    /// the calling thread: not from async code.
    func flushBlocking(timeout: Duration) -> Bool {
        busy.wait(timeout: .now() + timeout.timeInterval) == .success
    }
}

extension Duration {
    var timeInterval: Double {
        let (seconds, attoseconds) = components
        return Double(seconds) + Double(attoseconds) / 1e18
    }
}
