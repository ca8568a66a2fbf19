import Messaging

/// Feeds one frame to a router as a connection's frame dispatcher does: the id and a body view valid during the call.
/// A body that does not decode as the route's message is a protocol error (`BadMessageBody`, the connection would be
/// closed); any other error thrown by a handler breaks the router's contract and stops the run.
/// Returns true when a handler took the frame.
@discardableResult
public func dispatch<Connection>(_ router: MessageRouter<Connection>, id: Int32, body: [UInt8],
                                 connection: Connection) -> Bool {
    do {
        let result = try body.withUnsafeBytes { raw in
            try router.dispatch(messageID: id, body: raw, connection: connection)
        }
        return result == .handled
    } catch is BadMessageBody {
        return false
    } catch {
        fatalError("handler of message \(id) threw \(error)")
    }
}

/// Picks a message id: mostly one of `routed` (the ids a service registers), sometimes any id (unknown ids, the
/// heartbeat, negative ids).
public func messageID(_ input: inout FuzzInput, routed: [Int32]) -> Int32 {
    let pick = input.choice(routed.count + 1)
    if pick < routed.count { return routed[pick] }
    return Int32(bitPattern: input.uint32())
}
