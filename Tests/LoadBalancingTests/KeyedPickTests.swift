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
