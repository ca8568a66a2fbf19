import LarsProtocol
import LoadBalancing
import RouteStore
import SwiftProtobuf

/// The routes a name service serves: the database snapshot with the self-registered hosts merged in. A value;
/// reading it costs nothing (both layers are shared, copy-on-write).
public struct ServedRoutes: Sendable {
    /// The merged hosts of a route that has registered hosts, and its encoded answer.
    struct Route: Sendable, Equatable {
        var hosts: [Host]
        var body: [UInt8]
        var truncated: Bool
        var sent: Int
    }

    let database: RouteSnapshot
    let registered: [RouteKey: Route]
    /// The parent's routes (a regional name service), served where the database has no hosts.
    var inherited: [RouteKey: Route] = [:]

    /// The RouteVersion of the database snapshot (-1 before the first load).
    public var version: Int64 { database.version }

    /// The hosts of a route, sorted (empty when it has none).
    public func hosts(for key: RouteKey) -> [Host] {
        if let route = registered[key] { return route.hosts }
        let own = database.hosts(for: key)
        return own.isEmpty ? inherited[key]?.hosts ?? own : own
    }

    /// The GetRouteResponse body (protobuf) for a route, cut to fit one Lars frame.
    public func responseBody(for key: RouteKey) -> [UInt8] {
        if let route = registered[key] { return route.body }
        if let parent = inherited[key], database.hosts(for: key).isEmpty { return parent.body }
        return database.responseBody(for: key)
    }

    /// Every route with hosts (O(routes): for tools and tests).
    public var routes: [RouteKey: [Host]] {
        var all = database.routes
        for (key, route) in inherited where all[key] == nil && !route.hosts.isEmpty { all[key] = route.hosts }
        for (key, route) in registered { all[key] = route.hosts }
        return all
    }
}
