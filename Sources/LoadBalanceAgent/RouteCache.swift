import Dispatch
import Foundation
import LoadBalancing
import Logging

/// Routes saved on disk, so an agent restarted while the name service is down serves its last known routes.
///
/// The file is JSON: `{"routes": [{"modid": 1, "cmdid": 2, "hosts": ["10.0.0.1:9000", ...]}, ...]}`. Writes go to
/// a temporary file renamed over the old one, so a crash never leaves half a file.
public struct RouteCacheFile: Sendable {
    public let path: String

    public init(path: String) { self.path = path }

    struct Entry: Codable {
        var modid: Int32
        var cmdid: Int32
        var hosts: [String]
    }

    struct Document: Codable {
        var routes: [Entry]
    }

    /// Reads the routes; an absent file is no routes. Throws on unreadable or malformed contents.
    public func load() throws -> [RouteKey: [LoadBalancing.Host]] {
        guard FileManager.default.fileExists(atPath: path) else { return [:] }
        let data = try Data(contentsOf: URL(fileURLWithPath: path))
        let document = try JSONDecoder().decode(Document.self, from: data)
        var out: [RouteKey: [LoadBalancing.Host]] = [:]
        for entry in document.routes {
            out[RouteKey(modid: entry.modid, cmdid: entry.cmdid)] = entry.hosts.compactMap { LoadBalancing.Host($0) }
        }
        return out
    }

    /// Writes the routes atomically (temporary file, then rename).
    public func save(_ routes: [RouteKey: [LoadBalancing.Host]]) throws {
        let entries = routes.sorted { ($0.key.modid, $0.key.cmdid) < ($1.key.modid, $1.key.cmdid) }
            .map { Entry(modid: $0.key.modid, cmdid: $0.key.cmdid, hosts: $0.value.map(\.description)) }
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
        let data = try encoder.encode(Document(routes: entries))
        let temporary = path + ".tmp"
        try data.write(to: URL(fileURLWithPath: temporary))
        if rename(temporary, path) != 0 {
            throw CocoaError(.fileWriteUnknown, userInfo: [NSFilePathErrorKey: path])
        }
    }
}

/// Writes the route cache file off the agent's loop, in order (a serial queue). Safe to call from any thread.
final class RouteCacheWriter: Sendable {
    let file: RouteCacheFile
    private let logger: Logger
    private let queue = DispatchQueue(label: "switchyard.agent.route-cache")

    init(file: RouteCacheFile, logger: Logger) {
        self.file = file
        self.logger = logger
    }

    /// Queues a write of `routes`; a failure is logged (the agent goes on serving).
    func save(_ routes: [RouteKey: [LoadBalancing.Host]]) {
        let file = self.file
        let logger = self.logger
        queue.async {
            do {
                try file.save(routes)
            } catch {
                logger.warning("cannot save the route cache", metadata: ["file.path": "\(file.path)",
                                                                         "error": "\(error)"])
            }
        }
    }

    /// Returns once the writes queued so far are on disk, without holding the caller's thread.
    func flush() async {
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            queue.async { continuation.resume() }
        }
    }

    /// Waits until the writes queued so far are on disk. Blocks the calling thread: not from async code.
    func flushBlocking() { queue.sync {} }
}
