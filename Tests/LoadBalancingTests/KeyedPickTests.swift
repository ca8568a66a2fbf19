import LoadBalancing
import Testing

@Suite("GetHost by key: consistent hashing with bounded loads")
struct KeyedPickTests {
    let hosts = (1...5).map { Host(ip: 0x0A00_0000 + UInt32($0), port: 9000) }

    func key(_ i: Int) -> UInt64 { BoundedLoadRing.hash(Array("user-\(i)".utf8)) }

    @Test("the key hash is FNV-1a 64, the same in every process")
    func stableHash() {
        #expect(BoundedLoadRing.hash([UInt8]()) == 0xcbf2_9ce4_8422_2325)
        #expect(BoundedLoadRing.hash(Array("a".utf8)) == 0xaf63_dc4c_8601_ec8c)
        #expect(BoundedLoadRing.hash(Array("foobar".utf8)) == 0x8594_4171_f739_67e8)
    }

    @Test("a key goes to the same host call after call while its calls are reported")
    func sameKeySameHost() {
        var lb = RouteBalancer(hosts: hosts)
        for i in 0..<200 {
            let k = key(i)
            let owner = lb.owner(of: k)
            for _ in 0..<5 {
                let picked = lb.pick(key: k, now: 0).host
                #expect(picked == owner)
                lb.report(host: picked!, success: true, now: 0)
            }
        }
        #expect(hosts.allSatisfy { lb.outstandingCalls(of: $0) == 0 })
    }

    @Test("keys spread over every host; the ring does not depend on the order hosts are listed in")
    func spreadAndOrder() {
        let ring = BoundedLoadRing(hosts: hosts)
        let reversed = BoundedLoadRing(hosts: hosts.reversed())
        var counts: [Host: Int] = [:]
        for i in 0..<5000 {
            let owner = ring.owner(of: key(i))!
            #expect(owner == reversed.owner(of: key(i)))
            counts[owner, default: 0] += 1
        }
        // 64 points per host: every host owns a share near 1/5 (1000 keys); well inside 500...1500.
        #expect(counts.count == hosts.count)
        for (host, n) in counts { #expect((500...1500).contains(n), "\(host) owns \(n) of 5000 keys") }
    }

    @Test("removing a host moves only the keys it owned")
    func minimalMovement() {
        let before = BoundedLoadRing(hosts: hosts)
        let after = BoundedLoadRing(hosts: Array(hosts.dropLast()))
        var moved = 0
        for i in 0..<3000 {
            let was = before.owner(of: key(i))!
            let now = after.owner(of: key(i))!
            if was != hosts.last! { #expect(now == was) } else { moved += 1; #expect(now != hosts.last!) }
        }
        #expect(moved > 0)
    }

    @Test("one hot key with calls outstanding: no host goes past the bound, the load spills in ring order")
    func boundedLoads() {
        var lb = RouteBalancer(hosts: hosts)
        let hot = key(42)
        var total = 0
        for _ in 0..<500 {
            let ring = BoundedLoadRing()
            let bound = ring.bound(totalLoad: total, eligible: hosts.count)
            let picked = lb.pick(key: hot, now: 0).host!
            total += 1
            #expect(lb.outstandingCalls(of: picked) <= bound)
        }
        let loads = hosts.map { lb.outstandingCalls(of: $0) }
        #expect(loads.reduce(0, +) == 500)
        // Bound at the end: ceil(1.25 * 500 / 5) = 125; the owner is full, and the others got the rest.
        #expect(loads.max()! <= 125)
        #expect(lb.outstandingCalls(of: lb.owner(of: hot)!) >= 100)
        // Reports free the owner: it takes the key again.
        for host in hosts {
            for _ in 0..<lb.outstandingCalls(of: host) { lb.report(host: host, success: true, now: 0) }
        }
        #expect(lb.pick(key: hot, now: 0).host == lb.owner(of: hot))
    }

    @Test("an overloaded owner is passed over (except for probes) and takes its keys back when idle again")
    func overloadedOwnerSkipped() {
        var clock = MockClock()
        var lb = RouteBalancer(hosts: hosts, now: clock.now)
        let k = key(7)
        let owner = lb.owner(of: k)!
        for _ in 0..<10 { lb.report(host: owner, success: false, now: clock.now) }  // contin_err_limit 10
        #expect(lb.state(of: owner)?.health == .overloaded)
        var probes = 0
        for _ in 0..<100 {
            switch lb.pick(key: k, now: clock.now) {
            case .probe(let h):
                #expect(h == owner)
                probes += 1
                lb.report(host: h, success: false, now: clock.now)  // still failing
            case .host(let h):
                #expect(h != owner)
                lb.report(host: h, success: true, now: clock.now)
            default: Issue.record("unexpected pick")
            }
        }
        #expect(probes == 10)  // probe_num 10
        clock.advance(.seconds(16))  // overload_timeout 15 s: forced back to idle
        let back = lb.pick(key: k, now: clock.now)
        #expect(back.host == owner)
    }

    @Test("no hosts: empty; all overloaded: the plain pick's answer")
    func degenerateRoutes() {
        var empty = RouteBalancer()
        #expect(empty.pick(key: 1, now: 0) == .empty)
        var lb = RouteBalancer(hosts: [hosts[0]])
        for _ in 0..<10 { lb.report(host: hosts[0], success: false, now: 0) }
        #expect(lb.pick(key: 1, now: 0) == .overloaded)
    }

    @Test("unreported calls fade: each decay halves the loads")
    func decay() {
        var lb = RouteBalancer(hosts: hosts)
        for _ in 0..<40 { _ = lb.pick(key: key(1), now: 0) }
        let before = hosts.map { lb.outstandingCalls(of: $0) }
        lb.decayOutstanding()
        #expect(hosts.map { lb.outstandingCalls(of: $0) } == before.map { $0 / 2 })
        for _ in 0..<10 { lb.decayOutstanding() }
        #expect(hosts.allSatisfy { lb.outstandingCalls(of: $0) == 0 })
        #expect(lb.pick(key: key(1), now: 0).host == lb.owner(of: key(1)))
    }
}

@Suite("GetHost by key: hosts that report themselves full")
struct FullHostTests {
    let hosts = (1...4).map { Host(ip: 0x0A00_0100 + UInt32($0), port: 9000) }
    let movie = BoundedLoadRing.hash(Array("movie.ts".utf8))

    /// The hosts clockwise from `key`, as the ring meets them (the key's order of preference).
    func preference(_ key: UInt64, among hosts: [Host]) -> [Host] {
        var order: [Host] = []
        var left = hosts
        while !left.isEmpty {
            let next = BoundedLoadRing(hosts: left).owner(of: key)!
            order.append(next)
            left.removeAll { $0 == next }
        }
        return order
    }

    /// Picks `key` and reports the call, as a caller that connects and reports does.
    func pickAndReport(_ lb: inout RouteBalancer, _ key: UInt64) -> PickResult {
        let picked = lb.pick(key: key, now: 0)
        if let host = picked.host { lb.report(host: host, success: true, now: 0) }
        return picked
    }

    @Test("a key stays on its host until that host reports full, then goes to the next one on the ring, and back")
    func spillsOnlyWhenFull() {
        let order = preference(movie, among: hosts)
        var lb = RouteBalancer(hosts: hosts)
        // Loads below capacity change nothing: the key keeps its owner whatever the counts say.
        for viewers in [0, 5, 9] as [UInt32] {
            lb.setHosts(hosts, loads: [order[0]: HostLoad(load: viewers, capacity: 10),
                                       order[1]: HostLoad(load: 0, capacity: 10)], now: 0)
            #expect(pickAndReport(&lb, movie) == .host(order[0]), "at \(viewers) of 10 viewers")
        }
        lb.setHosts(hosts, loads: [order[0]: HostLoad(load: 10, capacity: 10)], now: 0)
        #expect(lb.isFull(order[0]) && !lb.isFull(order[1]))
        for _ in 0..<20 { #expect(pickAndReport(&lb, movie) == .host(order[1])) }
        // The next one full too: the third in the key's order, not any host.
        lb.setHosts(hosts, loads: [order[0]: HostLoad(load: 12, capacity: 10),
                                   order[1]: HostLoad(load: 3, capacity: 3)], now: 0)
        #expect(pickAndReport(&lb, movie) == .host(order[2]))
        // Room again (a viewer left): the key is back on its owner.
        lb.setHosts(hosts, loads: [order[0]: HostLoad(load: 9, capacity: 10)], now: 0)
        #expect(pickAndReport(&lb, movie) == .host(order[0]))
        // Other keys owned by other hosts do not move when order[0] is full.
        lb.setHosts(hosts, loads: [order[0]: HostLoad(load: 10, capacity: 10)], now: 0)
        for i in 0..<300 {
            let k = BoundedLoadRing.hash(Array("movie-\(i)".utf8))
            let owner = lb.owner(of: k)!
            let picked = pickAndReport(&lb, k).host!
            #expect(picked != order[0])
            if owner != order[0] { #expect(picked == owner) }
        }
    }

    @Test("every host full: OVERLOAD; no load reported, or a load for a host not in the route: never full")
    func allFullAndAbsentLoads() {
        var lb = RouteBalancer(hosts: hosts)
        let full = Dictionary(uniqueKeysWithValues: hosts.map { ($0, HostLoad(load: 4, capacity: 4)) })
        lb.setHosts(hosts, loads: full, now: 0)
        #expect(lb.pick(key: movie, now: 0) == .overloaded)
        #expect(hosts.allSatisfy { lb.outstandingCalls(of: $0) == 0 }, "an OVERLOAD answer loads no host")
        // A plain GetHost (no key) is Lars's round robin: loads are for keyed picks only.
        #expect(lb.pick(now: 0).host != nil)
        // The route came again without loads (an older name service, or the hosts stopped reporting): none is full.
        lb.setHosts(hosts, now: 0)
        #expect(hosts.allSatisfy { !lb.isFull($0) && lb.reportedLoad(of: $0) == nil })
        #expect(lb.pick(key: movie, now: 0).host == lb.owner(of: movie))
        // A load for a host the route does not have is dropped.
        let stranger = Host(ip: 0x0A00_0999, port: 1)
        lb.setHosts(hosts, loads: [stranger: HostLoad(load: 1, capacity: 1)], now: 0)
        #expect(lb.reportedLoad(of: stranger) == nil)
        // Capacity 0 is full from the start.
        #expect(HostLoad(load: 0, capacity: 0).isFull && !HostLoad(load: 0, capacity: 1).isFull)
    }

    @Test("the only idle host full, the other overloaded: OVERLOAD, but the overloaded one is still probed")
    func fullAndOverloaded() {
        var lb = RouteBalancer(settings: BalancerSettings(probeNum: 2), hosts: Array(hosts.prefix(2)))
        let order = preference(movie, among: Array(hosts.prefix(2)))
        // The owner fails until it is overloaded; the other one is full: keyed picks get OVERLOAD except probes.
        for _ in 0..<BalancerSettings().continErrLimit { lb.report(host: order[0], success: false, now: 0) }
        #expect(lb.overloadedHosts == [order[0]])
        lb.setHosts(Array(hosts.prefix(2)), loads: [order[1]: HostLoad(load: 1, capacity: 1)], now: 0)
        let results = (0..<4).map { _ in lb.pick(key: movie, now: 0) }
        #expect(results == [.overloaded, .probe(order[0]), .overloaded, .probe(order[0])])
    }
}
