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
    /// The weights of each route's hosts that are not 1 (RouteData.weight; HostInfo field 5 in the answer).
    public let weights: [RouteKey: [Host: UInt32]]
    private let responseBodies: [RouteKey: [UInt8]]
    /// The routes whose answer carries only some of their hosts: route -> (hosts, hosts sent).
    private let truncated: [RouteKey: (hosts: Int, sent: Int)]

    /// Builds a snapshot from RouteData entries (duplicates are kept once, with the last one's weight). Routes whose
    /// hosts and weights are the same as in `previous` reuse its encoded answer.
    public init(version: Int64, entries: [RouteEntry], reusing previous: RouteSnapshot? = nil) {
        var routes: [RouteKey: [Host]] = [:]
        var weights: [RouteKey: [Host: UInt32]] = [:]
        for entry in entries {
            routes[entry.key, default: []].append(entry.host)
            weights[entry.key, default: [:]][entry.host] = entry.weight == HostWeight.standard ? nil : entry.weight
        }
        for (key, hosts) in routes { routes[key] = Array(Set(hosts)).sorted() }
        weights = weights.filter { !$0.value.isEmpty }
        self.version = version
        self.routes = routes
        self.weights = weights
        var bodies: [RouteKey: [UInt8]] = [:]
        var truncated: [RouteKey: (hosts: Int, sent: Int)] = [:]
        for (key, hosts) in routes {
            if let previous, previous.routes[key] == hosts, previous.weights[key] == weights[key],
               let body = previous.responseBodies[key] {
                bodies[key] = body
                if let cut = previous.truncated[key] { truncated[key] = cut }
            } else {
                let (body, sent) = Self.encodeResponse(key, hosts, weights: weights[key] ?? [:])
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

    /// The weights of a route's hosts that are not 1.
    public func weights(for key: RouteKey) -> [Host: UInt32] { weights[key] ?? [:] }

    /// The routes whose hosts (or their weights) differ between two snapshots.
    public func changedRoutes(since old: RouteSnapshot) -> Set<RouteKey> {
        var changed: Set<RouteKey> = []
        for (key, hosts) in routes where old.routes[key] != hosts || old.weights[key] != weights[key] {
            changed.insert(key)
        }
        for key in old.routes.keys where routes[key] == nil { changed.insert(key) }
        return changed
    }

    /// Encodes GetRouteResponse with as many of `hosts` as fit in `LarsFrameLimit.maxBody`: HostInfo.ip is the
    /// reading-order number's int32 bit pattern; a host of `loads` carries its load and capacity (HostInfo fields 3
    /// and 4), a host of `weights` its weight (field 5; a host weighing 1 leaves it out, as Lars does). Returns the
    /// body and how many hosts it carries.
    static func encodeResponse(_ key: RouteKey, _ hosts: [Host], loads: [Host: HostLoad] = [:],
                               weights: [Host: UInt32] = [:]) -> (body: [UInt8], sent: Int)
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
            if let weight = weights[host], weight != HostWeight.standard { info.weight = weight }
            return info
        }
        response.truncateHosts(toFit: LarsFrameLimit.maxBody)
        return ((try? response.serializedBytes()) ?? [], response.host.count)
    }
}
