import LoadBalancing
import Testing

@Suite("Weights: smooth weighted round robin, weighted ring, drained hosts")
struct WeightTests {
    let hosts = (1...4).map { Host(ip: 0x0A00_0200 + UInt32($0), port: 9000) }

    func key(_ i: Int) -> UInt64 { BoundedLoadRing.hash(Array("weighted-\(i)".utf8)) }

    /// Picks `count` hosts with every call reported as a success (no host overloads).
    func picks(_ lb: inout RouteBalancer, _ count: Int) -> [Host] {
        (0..<count).map { _ in
            let host = lb.pick(now: 0).host!
            lb.report(host: host, success: true, now: 0)
            return host
        }
    }

    @Test("10,000 picks match the weights within 2%, and every run of sum(weights) picks holds each weight exactly")
    func sharesAndInterleaving() {
        let weights: [UInt32] = [5, 3, 1, 1]
        var lb = RouteBalancer(hosts: hosts)
        lb.setHosts(hosts, weights: Dictionary(uniqueKeysWithValues: zip(hosts, weights)), now: 0)
        let sequence = picks(&lb, 10_000)
        let total = Double(weights.reduce(0, +))
        for (host, weight) in zip(hosts, weights) {
            let share = Double(sequence.count(where: { $0 == host })) / 10_000
            #expect(abs(share - Double(weight) / total) <= 0.02, "\(host): \(share)")
        }
        // Evenly interleaved: each aligned period of 10 picks gives each host exactly its weight...
        for start in stride(from: 0, to: 10_000, by: 10) {
            let period = sequence[start..<start + 10]
            for (host, weight) in zip(hosts, weights) { #expect(period.count(where: { $0 == host }) == weight) }
        }
        // ...and no burst: the heaviest host (half the weight) never comes three times in a row, the others never
        // twice, and any 10 consecutive picks (not only aligned ones) hold each host's weight give or take 1.
        for i in 2..<sequence.count { #expect(!(sequence[i] == sequence[i - 1] && sequence[i] == sequence[i - 2])) }
        for i in 1..<sequence.count where sequence[i] != hosts[0] { #expect(sequence[i] != sequence[i - 1]) }
        for start in 0...(sequence.count - 10) {
            let window = sequence[start..<start + 10]
            for (host, weight) in zip(hosts, weights) {
                #expect(abs(window.count(where: { $0 == host }) - Int(weight)) <= 1)
            }
        }
        #expect(Array(sequence.prefix(10)) == [0, 1, 0, 2, 0, 1, 3, 0, 1, 0].map { hosts[$0] })
    }

    @Test("equal weights (none given, all 1, all 3): Lars's round robin in route order")
    func equalWeightsAreLars() {
        for weight: UInt32? in [nil, 1, 3] {
            var lb = RouteBalancer(hosts: hosts)
            if let weight { lb.setHosts(hosts, weights: Dictionary(uniqueKeysWithValues: hosts.map { ($0, weight) }),
                                        now: 0) }
            #expect(picks(&lb, 8) == hosts + hosts)
        }
    }

    @Test("weight 0 drains a host: never picked while another is idle, picked when it is the only one left")
    func drained() {
        var lb = RouteBalancer(hosts: hosts)
        lb.setHosts(hosts, weights: [hosts[0]: 0, hosts[1]: 2], now: 0)
        #expect(lb.weight(of: hosts[0]) == 0 && lb.weight(of: hosts[1]) == 2 && lb.weight(of: hosts[2]) == 1)
        let sequence = picks(&lb, 400)
        #expect(!sequence.contains(hosts[0]))
        #expect(sequence.count(where: { $0 == hosts[1] }) == 200)
        for i in 0..<100 { #expect(lb.pick(key: key(i), now: 0).host != hosts[0]) }
        // Every host with a weight overloads: the drained one is all that is idle, and it answers.
        for host in hosts.dropFirst() { for _ in 0..<10 { lb.report(host: host, success: false, now: 0) } }
        #expect(lb.idleHosts == [hosts[0]])
        #expect(lb.pick(now: 0).host == hosts[0])
        // All drained: served as if they weighed 1.
        var allDrained = RouteBalancer(hosts: hosts)
        allDrained.setHosts(hosts, weights: Dictionary(uniqueKeysWithValues: hosts.map { ($0, 0) }), now: 0)
        #expect(picks(&allDrained, 4) == hosts)
        #expect(allDrained.pick(key: key(1), now: 0).host != nil)
    }

    @Test("the ring gives each host keys in proportion to its weight; raising a weight takes keys only from others")
    func ringShares() {
        let weights: [Host: UInt32] = [hosts[0]: 1, hosts[1]: 2, hosts[2]: 4, hosts[3]: 1]
        let ring = BoundedLoadRing(hosts: hosts, weights: weights)
        var counts: [Host: Int] = [:]
        for i in 0..<40_000 { counts[ring.owner(of: key(i))!, default: 0] += 1 }
        for host in hosts {
            let expected = 40_000 * Double(weights[host]!) / 8
            // 64 points per unit of weight: within a quarter of the exact share (a deterministic hash).
            #expect(abs(Double(counts[host, default: 0]) - expected) <= expected / 4, "\(host): \(counts[host] ?? 0)")
        }
        var raised = weights
        raised[hosts[0]] = 3
        let after = BoundedLoadRing(hosts: hosts, weights: raised)
        var moved = 0
        for i in 0..<10_000 {
            let was = ring.owner(of: key(i))!
            let now = after.owner(of: key(i))!
            if now != was {
                moved += 1
                #expect(now == hosts[0])
            }
        }
        #expect(moved > 0)
    }

    @Test("the bounded-load cap scales with the weight: a hot key fills a host of weight 3 to three times the cap")
    func weightedBound() {
        let ring = BoundedLoadRing()
        #expect(ring.bound(totalLoad: 99, weight: 3, eligibleWeight: 4) == 94)  // ceil(1.25 * 100 * 3 / 4)
        #expect(ring.bound(totalLoad: 99, weight: 1, eligibleWeight: 4) == 32)
        #expect(ring.bound(totalLoad: 99, eligible: 4) == ring.bound(totalLoad: 99, weight: 1, eligibleWeight: 4))
        let pair = Array(hosts.prefix(2))
        var lb = RouteBalancer(hosts: pair)
        lb.setHosts(pair, weights: [pair[0]: 3], now: 0)
        // A key whose owner is the heavy host, then calls outstanding until the load spills.
        let hot = (0..<1000).map(key).first { lb.owner(of: $0) == pair[0] }!
        for total in 0..<400 {
            let picked = lb.pick(key: hot, now: 0).host!
            let w = lb.weight(of: picked)
            #expect(lb.outstandingCalls(of: picked) <= ring.bound(totalLoad: total, weight: w, eligibleWeight: 4))
        }
        // 400 calls: the heavy host holds its cap, ceil(1.25 * 400 * 3 / 4) = 375 at most, at least 3/4 of them.
        #expect((300...375).contains(lb.outstandingCalls(of: pair[0])))
        #expect(lb.outstandingCalls(of: pair[0]) + lb.outstandingCalls(of: pair[1]) == 400)
    }

    @Test("weights follow the route: a new weight map replaces the old, weights above the max are clamped")
    func weightsReplaced() {
        var lb = RouteBalancer(hosts: hosts)
        lb.setHosts(hosts, weights: [hosts[0]: 4], now: 0)
        #expect(picks(&lb, 7).count(where: { $0 == hosts[0] }) == 4)
        lb.setHosts(hosts, now: 0)
        #expect(lb.weight(of: hosts[0]) == 1)
        #expect(picks(&lb, 4).count(where: { $0 == hosts[0] }) == 1)
        lb.setHosts(hosts, weights: [hosts[1]: .max], now: 0)
        #expect(lb.weight(of: hosts[1]) == HostWeight.max)
        #expect(HostWeight.isValid(0) && HostWeight.isValid(10_000) && !HostWeight.isValid(10_001)
                && !HostWeight.isValid(-1))
    }
}
