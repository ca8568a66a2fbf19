import LarsProtocol
import LoadBalancing
import RouteStore
import Messaging
import SwiftProtobuf

/// An immutable view of RouteData at one RouteVersion: the hosts of each route and the encoded GetRouteResponse
/// body for it, so answering a request copies bytes and encodes nothing. Shared by every loop; never mutated.
public final class RouteSnapshot: Sendable {
    /// The RouteVersion the snapshot was loaded at (-1 before the first load).
    public let version: Int64
    /// The hosts of each route, sorted.
    public let routes: [RouteKey: [Host]]
    private let responseBodies: [RouteKey: [UInt8]]

    /// Builds a snapshot from RouteData entries (duplicates are kept once). Routes whose hosts are the same as in
    /// `previous` reuse its encoded answer.
    public init(version: Int64, entries: [RouteEntry], reusing previous: RouteSnapshot? = nil) {
        var routes: [RouteKey: [Host]] = [:]
        for entry in entries { routes[entry.key, default: []].append(entry.host) }
        for (key, hosts) in routes { routes[key] = Array(Set(hosts)).sorted() }
        self.version = version
        self.routes = routes
        var bodies: [RouteKey: [UInt8]] = [:]
        for (key, hosts) in routes {
            if let previous, previous.routes[key] == hosts, let body = previous.responseBodies[key] {
                bodies[key] = body
            } else {
                bodies[key] = Self.encodeResponse(key, hosts)
            }
        }
        self.responseBodies = bodies
    }

    /// The empty snapshot served before the first load.
    public static let empty = RouteSnapshot(version: -1, entries: [])

    /// The hosts of a route (empty when it has none).
    public func hosts(for key: RouteKey) -> [Host] { routes[key] ?? [] }

    /// The GetRouteResponse body (protobuf) for a route; a route without hosts gets a response with no hosts.
    public func responseBody(for key: RouteKey) -> [UInt8] {
        responseBodies[key] ?? Self.encodeResponse(key, [])
    }

    /// The routes whose hosts differ between two snapshots.
    public func changedRoutes(since old: RouteSnapshot) -> Set<RouteKey> {
        var changed: Set<RouteKey> = []
        for (key, hosts) in routes where old.routes[key] != hosts { changed.insert(key) }
        for key in old.routes.keys where routes[key] == nil { changed.insert(key) }
        return changed
    }

    /// Encodes GetRouteResponse: HostInfo.ip is the reading-order number's int32 bit pattern.
    static func encodeResponse(_ key: RouteKey, _ hosts: [Host]) -> [UInt8] {
        var response = Lars_GetRouteResponse()
        response.modid = key.modid
        response.cmdid = key.cmdid
        response.host = hosts.map { host in
            var info = Lars_HostInfo()
            info.ip = host.wireIP
            info.port = Int32(host.port)
            return info
        }
        return (try? response.serializedBytes()) ?? []
    }
}
