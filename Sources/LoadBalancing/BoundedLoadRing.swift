/// Consistent hashing with bounded loads: a key goes to the same host as long as that host has room, so caches
/// on the hosts stay warm ("same movie, same server, until full"); a host at its bound passes the key on to the
/// next host on the ring, and only that key moves.
///
/// Each host has `virtualNodes` points on a 64-bit ring. A key's candidates are the distinct hosts met walking
/// clockwise from the key's point. A host's load is its calls picked and not yet reported; the bound is
/// `ceil(loadFactor * (total load + 1) / eligible hosts)`, so no host carries more than `loadFactor` times the
/// average. Adding or removing a host moves only the keys of its arcs. Hashes are fixed (FNV-1a, then a
/// SplitMix64 finaliser): every agent puts a key on the same host.
public struct BoundedLoadRing: Sendable {
    /// Points per host on the ring.
    public let virtualNodes: Int
    /// How far above the average a host's load may go (1.25: a quarter above).
    public let loadFactor: Double
    private var points: [(point: UInt64, host: Host)] = []

    public init(hosts: [Host] = [], virtualNodes: Int = 64, loadFactor: Double = 1.25) {
        precondition((1...65_536).contains(virtualNodes), "virtualNodes must be 1...65536")
        precondition(loadFactor >= 1, "loadFactor must be at least 1")
        self.virtualNodes = virtualNodes
        self.loadFactor = loadFactor
        setHosts(hosts)
    }

    /// Rebuilds the ring for `hosts` (order does not matter).
    public mutating func setHosts(_ hosts: [Host]) {
        var out: [(point: UInt64, host: Host)] = []
        out.reserveCapacity(Set(hosts).count * virtualNodes)
        for host in Set(hosts) {
            for replica in 0..<virtualNodes {
                out.append((Self.point(host: host, replica: replica), host))
            }
        }
        // Ties (vanishingly rare) are broken by host, so every agent builds the same ring.
        points = out.sorted { ($0.point, $0.host) < ($1.point, $1.host) }
    }

    /// The largest load a host may carry when `eligible` hosts share `totalLoad` outstanding calls, counting the
    /// call being placed.
    public func bound(totalLoad: Int, eligible: Int) -> Int {
        guard eligible > 0 else { return 0 }
        return Int((loadFactor * Double(totalLoad + 1) / Double(eligible)).rounded(.up))
    }

    /// The host for `key`: the first host clockwise from the key's point that is `eligible` and whose load is
    /// below the bound. Nil when no host is eligible.
    public func pick(key: UInt64, eligible: (Host) -> Bool, load: (Host) -> Int, totalLoad: Int,
                     eligibleCount: Int) -> Host? {
        guard !points.isEmpty, eligibleCount > 0 else { return nil }
        let limit = bound(totalLoad: totalLoad, eligible: eligibleCount)
        var start = lowerBound(Self.mix(key))
        var seen = Set<Host>()
        var firstEligible: Host?
        for _ in 0..<points.count {
            if start == points.count { start = 0 }
            let host = points[start].host
            start += 1
            guard seen.insert(host).inserted, eligible(host) else { continue }
            if firstEligible == nil { firstEligible = host }
            if load(host) < limit { return host }
        }
        // Every eligible host is at the bound (cannot happen with loadFactor >= 1, kept for safety): the owner.
        return firstEligible
    }

    /// The first host clockwise from the key's point, ignoring loads (where the key lives when nobody is busy).
    public func owner(of key: UInt64) -> Host? {
        guard !points.isEmpty else { return nil }
        let i = lowerBound(Self.mix(key))
        return points[i == points.count ? 0 : i].host
    }

    private func lowerBound(_ value: UInt64) -> Int {
        var lo = 0
        var hi = points.count
        while lo < hi {
            let mid = (lo + hi) / 2
            if points[mid].point < value { lo = mid + 1 } else { hi = mid }
        }
        return lo
    }

    /// A key's 64-bit hash (FNV-1a over the bytes; `pick` mixes it further): the same in every process.
    public static func hash<Bytes: Sequence>(_ bytes: Bytes) -> UInt64 where Bytes.Element == UInt8 {
        var h: UInt64 = 0xcbf2_9ce4_8422_2325
        for b in bytes {
            h ^= UInt64(b)
            h = h &* 0x0000_0100_0000_01b3
        }
        return h
    }

    static func point(host: Host, replica: Int) -> UInt64 {
        mix(UInt64(host.ip) << 32 | UInt64(host.port) << 16 | UInt64(truncatingIfNeeded: replica))
    }

    /// SplitMix64's finaliser: spreads nearby inputs over the whole ring.
    static func mix(_ x: UInt64) -> UInt64 {
        var z = x &+ 0x9e37_79b9_7f4a_7c15
        z = (z ^ (z >> 30)) &* 0xbf58_476d_1ce4_e5b9
        z = (z ^ (z >> 27)) &* 0x94d0_49bb_1331_11eb
        return z ^ (z >> 31)
    }
}
