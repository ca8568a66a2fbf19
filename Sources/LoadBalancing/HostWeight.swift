/// A host's weight: its share of a route's picks is its weight over the sum of the weights of the route's idle hosts
/// (smooth weighted round robin), and its share of keys on the ring (``BoundedLoadRing``) the same. 1 is the default
/// (a Lars database has no weight column: every host weighs 1); 0 drains a host: it is never picked while a host
/// with a weight above 0 is idle.
public enum HostWeight {
    /// The weight of a host nobody gave one (Lars's rows, HostInfo without field 5).
    public static let standard: UInt32 = 1
    /// The largest weight taken (`route add --weight`, registrations); an agent clamps a larger one from the wire to
    /// it. 10,000 keeps a route's sums far from overflow and its ring within ``BoundedLoadRing/maxPoints``.
    public static let max: UInt32 = 10_000

    /// Whether `weight` may be stored or registered (0...``max``).
    public static func isValid(_ weight: Int) -> Bool { (0...Int(max)).contains(weight) }
}
