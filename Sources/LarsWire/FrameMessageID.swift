/// The message id of one protocol: a name for the Int32 a frame header carries. Each protocol has its own type
/// (`MessageID` for Lars in LarsProtocol, `ChatMessageID` in Chat), so an id of one protocol cannot be passed where
/// another's is expected, and a raw number needs `init(rawValue:)`.
public protocol FrameMessageID: RawRepresentable, Hashable, Sendable, CustomStringConvertible
where RawValue == Int32 {
    init(rawValue: Int32)
}

extension FrameMessageID {
    public var description: String { "\(rawValue)" }
}

/// Ids the framework reserves in every protocol.
public enum ReservedMessageID {
    /// Heartbeats: a peer that has been silent sends a frame with this id and an empty body; servers and clients
    /// swallow it (it never reaches a handler) and count it as activity. Lars uses 1...8, so 0 cannot collide with a
    /// Lars peer.
    public static let heartbeat: Int32 = 0
}
