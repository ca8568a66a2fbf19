import LarsProtocol
import LoadBalancing
import RouteStore
import Messaging
import SwiftProtobuf

/// An immutable view of RouteData at one RouteVersion: the hosts of each route and the encoded GetRouteResponse
/// body for it, so answering a request copies bytes and encodes nothing. Shared by every loop; never mutated.
///
/// A route with more hosts than fit in one Lars frame (65,527 bytes of body, PROTOCOL.md) is answered with as many
/// of its hosts (sorted) as fit; `truncatedRoutes` names those routes.
public final class RouteSnapshot: Sendable {
    /// The RouteVersion the snapshot was loaded at (-1 before the first load).
    public let version: Int64
    /// The hosts of each route, sorted.
    public let routes: [RouteKey: [Host]]
    private let responseBodies: [RouteKey: [UInt8]]
    /// The routes whose answer carries only some of their hosts: route -> (hosts, hosts sent).
    private let truncated: [RouteKey: (hosts: Int, sent: Int)]

    /// Builds a snapshot from RouteData entries (duplicates are kept once). Routes whose hosts are the same as in
    /// `previous` reuse its encoded answer.
    public init(version: Int64, entries: [RouteEntry], reusing previous: RouteSnapshot? = nil) {
        var routes: [RouteKey: [Host]] = [:]
        for entry in entries { routes[entry.key, default: []].append(entry.host) }
        for (key, hosts) in routes { routes[key] = Array(Set(hosts)).sorted() }
        self.version = version
        self.routes = routes
        var bodies: [RouteKey: [UInt8]] = [:]
        var truncated: [RouteKey: (hosts: Int, sent: Int)] = [:]
        for (key, hosts) in routes {
            if let previous, previous.routes[key] == hosts, let body = previous.responseBodies[key] {
                bodies[key] = body
                if let cut = previous.truncated[key] { truncated[key] = cut }
            } else {
                let (body, sent) = Self.encodeResponse(key, hosts)
                bodies[key] = body
                if sent < hosts.count { truncated[key] = (hosts.count, sent) }
            }
        }
        self.responseBodies = bodies
        self.truncated = truncated
    }

    /// The routes answered with only some of their hosts, with how many hosts they have.
    public var truncatedRoutes: [RouteKey: Int] { truncated.mapValues(\.hosts) }

    /// The host count of a route whose answer is cut (nil when it fits).
    func truncatedHostCount(for key: RouteKey) -> Int? { truncated[key]?.hosts }

    /// How many hosts the answer of a route carries.
    func sentHostCount(for key: RouteKey) -> Int { truncated[key]?.sent ?? routes[key]?.count ?? 0 }

    /// The empty snapshot served before the first load.
    public static let empty = RouteSnapshot(version: -1, entries: [])

    /// The hosts of a route (empty when it has none).
    public func hosts(for key: RouteKey) -> [Host] { routes[key] ?? [] }

    /// The GetRouteResponse body (protobuf) for a route; a route without hosts gets a response with no hosts.
    public func responseBody(for key: RouteKey) -> [UInt8] {
        responseBodies[key] ?? Self.encodeResponse(key, []).body
    }

    /// The routes whose hosts differ between two snapshots.
    public func changedRoutes(since old: RouteSnapshot) -> Set<RouteKey> {
        var changed: Set<RouteKey> = []
        for (key, hosts) in routes where old.routes[key] != hosts { changed.insert(key) }
        for key in old.routes.keys where routes[key] == nil { changed.insert(key) }
        return changed
    }

    /// Encodes GetRouteResponse with as many of `hosts` as fit in `LarsFrameLimit.maxBody`: HostInfo.ip is the
    /// reading-order number's int32 bit pattern; a host of `loads` carries its load and capacity (HostInfo fields 3
    /// and 4). Returns the body and how many hosts it carries.
    static func encodeResponse(_ key: RouteKey, _ hosts: [Host], loads: [Host: HostLoad] = [:])
        -> (body: [UInt8], sent: Int)
    {
        var response = Lars_GetRouteResponse()
        response.modid = key.modid
        response.cmdid = key.cmdid
        response.host = hosts.map { host in
            var info = Lars_HostInfo()
            info.ip = host.wireIP
            info.port = Int32(host.port)
            if let load = loads[host] {
                info.load = load.load
                info.capacity = load.capacity
            }
            return info
        }
        response.truncateHosts(toFit: LarsFrameLimit.maxBody)
        return ((try? response.serializedBytes()) ?? [], response.host.count)
    }
}
