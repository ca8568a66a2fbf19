import LarsWire
import Reactor
import SwiftProtobuf
import Synchronization

/// Errors raised when routes are registered.
public enum RouterError: Error, Equatable, Sendable, CustomStringConvertible {
    /// The id already has a handler.
    case duplicateRoute(Int32)
    /// The id is reserved by the framework (`ReservedMessageID.heartbeat`).
    case reservedID(Int32)
    /// Routes are fixed once a server or client using the router has started.
    case routerFrozen

    public var description: String {
        switch self {
        case .duplicateRoute(let id): return "message id \(id) already has a handler"
        case .reservedID(let id): return "message id \(id) is reserved (heartbeat)"
        case .routerFrozen: return "routes cannot be added after the router's server or client has started"
        }
    }
}

/// A handler found a body it cannot accept: the frame is a protocol error and the connection is closed.
public struct BadMessageBody: Error, CustomStringConvertible {
    public let messageID: Int32
    public let reason: String
    public init(messageID: Int32, reason: String) {
        self.messageID = messageID
        self.reason = reason
    }
    public var description: String { "message \(messageID): \(reason)" }
}

/// One inbound frame as a handler sees it: the id, the body (a view valid during the call only), the connection
/// it came on (a `TCPConnection`, or a `UDPPeer` for datagrams), and the route's user data.
public struct InboundMessage<Connection> {
    public let messageID: Int32
    public let body: UnsafeRawBufferPointer
    public let connection: Connection
    public let userData: (any Sendable)?

    /// The body copied out of the loop's buffer.
    public var bodyBytes: [UInt8] { Array(body) }
}

/// Maps message ids to handlers. Register every route before starting the server or client that uses it;
/// registering an id twice throws at once. After start the table is read-only and dispatch takes no lock.
///
/// Frames with an id that has no route go to `unknownHandler` when set; otherwise they are counted and logged (a
/// `FramedServer`: once per episode across its connections; a `FramedClient`: once per connection), and the
/// connection stays open.
public final class MessageRouter<Connection>: @unchecked Sendable {
    // @unchecked Sendable: the tables are written only before `freeze()` (a Mutex guards registration and the
    // frozen flag); after it they are only read, from any loop.

    public typealias Handler = @Sendable (InboundMessage<Connection>) throws -> Void

    struct Route {
        let handler: Handler
        let userData: (any Sendable)?
    }

    private static var denseLimit: Int32 { 1024 }
    private var dense: [Route?] = Array(repeating: nil, count: 1024)
    private var sparse: [Int32: Route] = [:]
    private let registration = Mutex<Bool>(false)  // frozen
    /// Frames whose id has no route, when no `unknownHandler` is set.
    private let unknownCount = Atomic<Int>(0)
    private var unknownHandler: Handler?

    public init() {}

    /// Adds a route for `id`. Throws `RouterError.duplicateRoute` when `id` already has one.
    public func on(_ id: some FrameMessageID, userData: (any Sendable)? = nil, _ handler: @escaping Handler) throws {
        try on(rawID: id.rawValue, userData: userData, handler)
    }

    @usableFromInline
    func on(rawID id: Int32, userData: (any Sendable)?, _ handler: @escaping Handler) throws {
        try registration.withLock { frozen in
            if frozen { throw RouterError.routerFrozen }
            if id == ReservedMessageID.heartbeat { throw RouterError.reservedID(id) }
            if lookup(id) != nil { throw RouterError.duplicateRoute(id) }
            let route = Route(handler: handler, userData: userData)
            if id >= 0 && id < Self.denseLimit { dense[Int(id)] = route } else { sparse[id] = route }
        }
    }

    /// Adds a typed route: the body is decoded as `M` (protobuf); a body that does not decode is a protocol error.
    /// Inlinable, so the decoding closure is specialized for `M` in the caller's module (unspecialized, every frame
    /// looked up `M`'s generic metadata at run time).
    @inlinable
    public func on<M: SwiftProtobuf.Message>(
        _ id: some FrameMessageID, as type: M.Type, userData: (any Sendable)? = nil,
        _ handler: @escaping @Sendable (M, InboundMessage<Connection>) throws -> Void
    ) throws {
        let id = id.rawValue
        try on(rawID: id, userData: userData) { message in
            let decoded: M
            do {
                decoded = try M(serializedBytes: message.body.bytes)  // RawSpan: no copy, no Foundation
            } catch {
                throw BadMessageBody(messageID: id, reason: "body is not a valid \(M.protoMessageName): \(error)")
            }
            try handler(decoded, message)
        }
    }

    /// Adds a typed route whose handler takes the decoded body and the connection it came on (a service's
    /// `hub.join(_:from:)`); `M` is inferred from the handler.
    @inlinable
    public func on<M: SwiftProtobuf.Message>(
        _ id: some FrameMessageID, _ handler: @escaping @Sendable (M, Connection) -> Void
    ) throws {
        try on(id, as: M.self) { decoded, message in handler(decoded, message.connection) }
    }

    /// Handles frames whose id has no route (instead of counting and logging them).
    public func onUnknown(_ handler: @escaping Handler) throws {
        try registration.withLock { frozen in
            if frozen { throw RouterError.routerFrozen }
            unknownHandler = handler
        }
    }

    /// Fixes the routes. Called by servers and clients when they start; idempotent.
    public func freeze() { registration.withLock { $0 = true } }

    /// Frames that had no route and no unknown handler.
    public var unknownMessages: Int { unknownCount.load(ordering: .relaxed) }

    /// True when `id` has a route.
    public func hasRoute(_ id: some FrameMessageID) -> Bool { lookup(id.rawValue) != nil }

    @inline(__always)
    private func lookup(_ id: Int32) -> Route? {
        if id >= 0 && id < Self.denseLimit { return dense[Int(id)] }
        return sparse[id]
    }

    /// What happened to a dispatched frame.
    public enum DispatchResult {
        case handled
        case unknown
    }

    /// Runs the handler of `messageID`. Throws what the handler throws (a protocol error).
    @inline(__always)
    public func dispatch(messageID: Int32, body: UnsafeRawBufferPointer, connection: Connection) throws
        -> DispatchResult
    {
        if let route = lookup(messageID) {
            try route.handler(InboundMessage(messageID: messageID, body: body, connection: connection,
                                             userData: route.userData))
            return .handled
        }
        if let unknownHandler {
            try unknownHandler(InboundMessage(messageID: messageID, body: body, connection: connection, userData: nil))
            return .handled
        }
        unknownCount.wrappingAdd(1, ordering: .relaxed)
        return .unknown
    }
}
