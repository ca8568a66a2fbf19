import LarsWire

/// The largest bodies a Switchyard service sends to a Lars-protocol peer (PROTOCOL.md, "Frame").
public enum LarsFrameLimit {
    /// Lars caps a frame's body at 65,527 bytes; our services never send a larger one to a Lars peer (TCP).
    public static let maxBody = 65_527
    /// The largest body of one UDP datagram (65,507 - 8); below `maxBody`, so it is the cap on the agent's ports.
    public static let maxDatagramBody = FrameParser.maxDatagramBodyLength
}

extension Lars_GetRouteResponse {
    /// How many of `host`, from the first, fit in a body of at most `maxBody` bytes (all of them when the whole
    /// response fits). Computed from the protobuf wire sizes, without encoding.
    public func hostCountFitting(maxBody: Int) -> Int {
        var size = Self.fieldSize(1, Int64(modid)) + Self.fieldSize(2, Int64(cmdid))
        for (index, info) in host.enumerated() {
            var inner = Self.fieldSize(1, Int64(info.ip)) + Self.fieldSize(2, Int64(info.port))
            // The load fields (a Switchyard extension) have presence: written when set, even as 0.
            if info.hasLoad { inner += 1 + Self.varintSize(UInt64(info.load)) }
            if info.hasCapacity { inner += 1 + Self.varintSize(UInt64(info.capacity)) }
            if info.hasWeight { inner += 1 + Self.varintSize(UInt64(info.weight)) }
            size += 1 + Self.varintSize(UInt64(inner)) + inner
            if size > maxBody { return index }
        }
        return host.count
    }

    /// Drops the hosts past those that fit in `maxBody` bytes; returns how many were dropped (0: it fitted).
    @discardableResult
    public mutating func truncateHosts(toFit maxBody: Int) -> Int {
        let fitting = hostCountFitting(maxBody: maxBody)
        let dropped = host.count - fitting
        if dropped > 0 { host.removeLast(dropped) }
        return dropped
    }

    /// The size of a varint field with a one-byte tag (field numbers below 16); 0 for the default value 0, which
    /// proto3 does not write. Negative int32 values take ten bytes (sign-extended to 64 bits).
    private static func fieldSize(_ field: Int, _ value: Int64) -> Int {
        value == 0 ? 0 : 1 + varintSize(UInt64(bitPattern: value))
    }

    private static func varintSize(_ value: UInt64) -> Int {
        var v = value
        var n = 1
        while v >= 0x80 {
            v >>= 7
            n += 1
        }
        return n
    }
}
