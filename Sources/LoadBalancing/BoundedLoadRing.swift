import SwitchyardCore

/// Consistent hashing with bounded loads: a key goes to the same host as long as that host has room, so caches
/// on the hosts stay warm ("same movie, same server, until full"); a host at its bound passes the key on to the
/// next host on the ring, and only that key moves.
///
/// Each host has `virtualNodes` points on a 64-bit ring per unit of weight (``HostWeight``; a host of weight 0 has
/// none), so its share of the keys is its share of the weight. A key's candidates are the distinct hosts met walking
/// clockwise from the key's point. A host's load is its calls picked and not yet reported; its bound is
/// `ceil(loadFactor * (total load + 1) * weight / eligible weight)`, so no host carries more than `loadFactor` times
/// its weighted share (with equal weights: the average). Adding or removing a host moves only the keys of its arcs.
/// Hashes are fixed (FNV-1a, then a SplitMix64 finaliser): every agent puts a key on the same host.
///
/// The ring holds at most ``maxPoints`` points: when the weights ask for more, every host gets fewer points per unit
/// of weight (the same number for all, at least 1), so shares stay proportional.
public struct BoundedLoadRing: Sendable {
    /// Points per host on the ring.
    public let virtualNodes: Int
    /// How far above the average a host's load may go (1.25: a quarter above).
    public let loadFactor: Double
    private var points: [(point: UInt64, host: Host)] = []
    /// The most points a ring holds (1 Mi: 16 MiB), whatever the weights.
    public static let maxPoints = 1 << 20

    /// A ring over `hosts`; `weights` gives a host's weight (absent: ``HostWeight/standard``).
    public init(hosts: [Host] = [], weights: [Host: UInt32] = [:], virtualNodes: Int = 64, loadFactor: Double = 1.25) {
        precondition((1...65_536).contains(virtualNodes), "virtualNodes must be 1...65536")
        precondition(loadFactor >= 1, "loadFactor must be at least 1")
        self.virtualNodes = virtualNodes
        self.loadFactor = loadFactor
        setHosts(hosts, weights: weights)
    }

    /// Rebuilds the ring for `hosts` (order does not matter); `weights` as in
    /// ``init(hosts:weights:virtualNodes:loadFactor:)``.
    public mutating func setHosts(_ hosts: [Host], weights: [Host: UInt32] = [:]) {
        let unique = Set(hosts)
        let totalWeight = unique.reduce(0) { $0 + Int(weights[$1] ?? HostWeight.standard) }
        let perWeight = totalWeight * virtualNodes <= Self.maxPoints
            ? virtualNodes : Swift.max(1, Self.maxPoints / Swift.max(1, totalWeight))
        var out: [(point: UInt64, host: Host)] = []
        out.reserveCapacity(Swift.min(totalWeight * perWeight, Self.maxPoints + unique.count))
        for host in unique {
            // Replicas 0..<n: a host's points at weight w are a prefix of its points at any larger weight, so raising
            // a weight only takes keys from other hosts, it moves none between them.
            for replica in 0..<(Int(weights[host] ?? HostWeight.standard) * perWeight) {
                out.append((Self.point(host: host, replica: replica), host))
            }
        }
        // Ties (vanishingly rare) are broken by host, so every agent builds the same ring.
        points = out.sorted { ($0.point, $0.host) < ($1.point, $1.host) }
    }

    /// The largest load a host may carry when `eligible` hosts share `totalLoad` outstanding calls, counting the
    /// call being placed.
    public func bound(totalLoad: Int, eligible: Int) -> Int {
        bound(totalLoad: totalLoad, weight: 1, eligibleWeight: eligible)
    }

    /// The largest load a host of `weight` may carry when hosts weighing `eligibleWeight` together share
    /// `totalLoad` outstanding calls, counting the call being placed: its weighted share times `loadFactor`.
    public func bound(totalLoad: Int, weight: UInt32, eligibleWeight: Int) -> Int {
        guard eligibleWeight > 0 else { return 0 }
        return Int((loadFactor * Double(totalLoad + 1) * Double(weight) / Double(eligibleWeight)).rounded(.up))
    }

    /// The host for `key`: the first host clockwise from the key's point that is `eligible` and whose load is
    /// below the bound. Nil when no host is eligible.
    public func pick(key: UInt64, eligible: (Host) -> Bool, load: (Host) -> Int, totalLoad: Int,
                     eligibleCount: Int) -> Host? {
        pick(key: key, eligible: eligible, load: load, totalLoad: totalLoad, weight: { _ in 1 },
             eligibleWeight: eligibleCount)
    }

    /// The host for `key` with weighted bounds: the first host clockwise from the key's point that is `eligible`
    /// and whose load is below its bound (``bound(totalLoad:weight:eligibleWeight:)``). Nil when no host is
    /// eligible.
    public func pick(key: UInt64, eligible: (Host) -> Bool, load: (Host) -> Int, totalLoad: Int,
                     weight: (Host) -> UInt32, eligibleWeight: Int) -> Host? {
        guard !points.isEmpty, eligibleWeight > 0 else { return nil }
        var start = lowerBound(Self.mix(key))
        var seen = Set<Host>()
        var firstEligible: Host?
        for _ in 0..<points.count {
            if start == points.count { start = 0 }
            let host = points[start].host
            start += 1
            guard seen.insert(host).inserted, eligible(host) else { continue }
            if firstEligible == nil { firstEligible = host }
            if load(host) < bound(totalLoad: totalLoad, weight: weight(host), eligibleWeight: eligibleWeight) {
                return host
            }
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
    static func mix(_ x: UInt64) -> UInt64 { SplitMix64.mix(x) }
}
