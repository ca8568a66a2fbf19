/// SplitMix64: a small, fast, seedable generator (Steele, Lea and Flood's; the seeding generator of xoshiro). Its
/// finaliser `mix` is a good 64-bit hash of nearby inputs (the agent's key ring); its sequence is the same on every
/// machine for a seed (benchmark keys, the random tests).
public struct SplitMix64: RandomNumberGenerator, Sendable {
    private static let gamma: UInt64 = 0x9E37_79B9_7F4A_7C15
    public var state: UInt64

    public init(seed: UInt64) { state = seed }

    public mutating func next() -> UInt64 {
        defer { state &+= Self.gamma }
        return Self.mix(state)
    }

    /// The output for state `x`: `x` plus the golden gamma, then two xor-shift-multiplies and a xor-shift.
    @inlinable
    public static func mix(_ x: UInt64) -> UInt64 {
        var z = x &+ 0x9E37_79B9_7F4A_7C15
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}
