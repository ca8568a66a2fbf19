/// The load a self-registered host reports with its registration (a relay: its viewers now and its capacity), as the
/// name service hands it out with the route (HostInfo fields 3 and 4, a Switchyard extension of the Lars protocol).
/// A host with no reported load has no entry: it is never full.
public struct HostLoad: Sendable, Hashable, CustomStringConvertible {
    /// What the host carries now (a relay: its viewers).
    public var load: UInt32
    /// The most it takes (a relay: `--capacity`).
    public var capacity: UInt32

    public init(load: UInt32, capacity: UInt32) {
        self.load = load
        self.capacity = capacity
    }

    /// The host takes no more: GetHost by key passes it over.
    public var isFull: Bool { load >= capacity }

    public var description: String { "\(load)/\(capacity)" }
}
