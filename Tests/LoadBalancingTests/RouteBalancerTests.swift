import LoadBalancing
import Testing

/// A mock clock: nanoseconds, advanced by hand.
struct MockClock {
    var now: UInt64 = 1_000_000_000
    mutating func advance(_ d: Duration) {
        let (s, atto) = d.components
        now += UInt64(s) * 1_000_000_000 + UInt64(atto / 1_000_000_000)
    }
}

let a = Host(ip: 0x0A00_0001, port: 9000)
let b = Host(ip: 0x0A00_0002, port: 9000)
let c = Host(ip: 0x0A00_0003, port: 9000)

@Suite("RouteBalancer state machine")
struct RouteBalancerTests {
    func fail(_ lb: inout RouteBalancer, _ host: Host, times: Int, at now: UInt64) {
        for _ in 0..<times { lb.report(host: host, success: false, now: now) }
    }

    func succeed(_ lb: inout RouteBalancer, _ host: Host, times: Int, at now: UInt64) {
        for _ in 0..<times { lb.report(host: host, success: true, now: now) }
    }

    @Test func hostDescriptionAndParsing() {
        #expect(Host(ip: 0x7F00_0001, port: 8080).description == "127.0.0.1:8080")
        #expect(Host("10.0.0.3:9000") == c)
        #expect(Host("10.0.0.256:1") == nil)
        #expect(Host("1.2.3:1") == nil)
        #expect(Host(wireIP: Int32(bitPattern: 0xC0A8_0001), wirePort: 80)?.description == "192.168.0.1:80")
        #expect(Host(ip: 0xC0A8_0001, port: 80).wireIP == -1_062_731_775)
    }

    @Test func defaultsAreLars() {
        let s = BalancerSettings()
        #expect(s.probeNum == 10 && s.initSuccCount == 180 && s.initErrCount == 5)
        #expect(s.errRate == 0.1 && s.succRate == 0.92 && s.windowErrRate == 0.7)
        #expect(s.continErrLimit == 10 && s.continSuccLimit == 10)
        #expect(s.idleTimeout == .seconds(15) && s.overloadTimeout == .seconds(15) && s.updateTimeout == .seconds(15))
        #expect(throws: Never.self) { try s.validate() }
        #expect(throws: BalancerSettingsError.probeNumBelowOne(0)) { try BalancerSettings(probeNum: 0).validate() }
    }

    @Test func emptyRoute() {
        var lb = RouteBalancer()
        #expect(lb.pick(now: 0) == .empty)
    }

    @Test func roundRobinOverIdleHosts() {
        let clock = MockClock()
        var lb = RouteBalancer(hosts: [a, b, c], now: clock.now)
        let picks = (0..<9).map { _ in lb.pick(now: clock.now) }
        #expect(picks == [a, b, c, a, b, c, a, b, c].map { .host($0) })
        #expect(lb.callShares[a] == 1.0 / 3)
        #expect(lb.state(of: a)?.picks == 3)
        let fresh = lb.state(of: b)!
        #expect(fresh.health == .idle && fresh.virtualSuccesses == 180 && fresh.virtualErrors == 0)
    }

    @Test func consecutiveErrorsOverload() {
        let clock = MockClock()
        var lb = RouteBalancer(hosts: [a, b], now: clock.now)
        fail(&lb, a, times: 9, at: clock.now)
        #expect(lb.state(of: a)?.health == .idle)
        #expect(lb.state(of: a)?.consecutiveErrors == 9)
        // A success breaks the run.
        succeed(&lb, a, times: 1, at: clock.now)
        fail(&lb, a, times: 9, at: clock.now)
        #expect(lb.state(of: a)?.health == .idle)
        fail(&lb, a, times: 1, at: clock.now)  // 10 in a row: contin_err_limit
        let s = lb.state(of: a)!
        #expect(s.health == .overloaded)
        #expect(s.virtualSuccesses == 0 && s.virtualErrors == 5 && s.consecutiveErrors == 0)
        #expect(lb.overloadedHosts == [a] && lb.idleHosts == [b])
    }

    @Test func virtualErrorRateOverloads() {
        let clock = MockClock()
        // Consecutive limit out of the way: only the rate can trigger.
        var lb = RouteBalancer(settings: BalancerSettings(continErrLimit: 1000), hosts: [a], now: clock.now)
        // 180 virtual successes: 20 errors is 20/200 = 0.1, not above err_rate; the 21st is.
        fail(&lb, a, times: 20, at: clock.now)
        #expect(lb.state(of: a)?.health == .idle)
        fail(&lb, a, times: 1, at: clock.now)
        #expect(lb.state(of: a)?.health == .overloaded)
    }

    @Test func successesDoNotOverloadAndErrorsAfterManySuccessesDilute() {
        let clock = MockClock()
        var lb = RouteBalancer(settings: BalancerSettings(continErrLimit: 1000), hosts: [a], now: clock.now)
        succeed(&lb, a, times: 180, at: clock.now)  // 360 virtual successes: 40 errors is exactly 0.1
        fail(&lb, a, times: 40, at: clock.now)
        #expect(lb.state(of: a)?.health == .idle)
        fail(&lb, a, times: 1, at: clock.now)
        #expect(lb.state(of: a)?.health == .overloaded)
    }

    @Test func probeEveryProbeNumthRequest() {
        let clock = MockClock()
        var lb = RouteBalancer(hosts: [a, b], now: clock.now)
        fail(&lb, a, times: 10, at: clock.now)
        var results: [PickResult] = []
        for _ in 0..<30 { results.append(lb.pick(now: clock.now)) }
        for (i, r) in results.enumerated() {
            if (i + 1) % 10 == 0 { #expect(r == .probe(a), "request \(i + 1)") } else { #expect(r == .host(b)) }
        }
    }

    @Test func allOverloadedAnswersOverloadExceptProbes() {
        let clock = MockClock()
        var lb = RouteBalancer(hosts: [a, b], now: clock.now)
        fail(&lb, a, times: 10, at: clock.now)
        fail(&lb, b, times: 10, at: clock.now)
        let results = (0..<20).map { _ in lb.pick(now: clock.now) }
        #expect(results.filter { $0 == .overloaded }.count == 18)
        #expect(results[9] == .probe(a) && results[19] == .probe(b))  // probes go round robin too
    }

    @Test func consecutiveSuccessesRecover() {
        let clock = MockClock()
        var lb = RouteBalancer(hosts: [a, b], now: clock.now)
        fail(&lb, a, times: 10, at: clock.now)
        succeed(&lb, a, times: 9, at: clock.now)
        #expect(lb.state(of: a)?.health == .overloaded)
        // An error resets the run.
        fail(&lb, a, times: 1, at: clock.now)
        succeed(&lb, a, times: 9, at: clock.now)
        #expect(lb.state(of: a)?.health == .overloaded)
        succeed(&lb, a, times: 1, at: clock.now)
        let s = lb.state(of: a)!
        #expect(s.health == .idle && s.virtualSuccesses == 180 && s.virtualErrors == 0)
        #expect(lb.idleHosts == [b, a] && lb.overloadedHosts.isEmpty)
    }

    @Test func virtualSuccessRateRecovers() {
        let clock = MockClock()
        var lb = RouteBalancer(settings: BalancerSettings(continSuccLimit: 1000), hosts: [a], now: clock.now)
        fail(&lb, a, times: 10, at: clock.now)  // overloaded: 0 virtual successes, 5 virtual errors
        // 57/62 = 0.919 is not above 0.92; 58/63 = 0.9206 is.
        succeed(&lb, a, times: 57, at: clock.now)
        #expect(lb.state(of: a)?.health == .overloaded)
        succeed(&lb, a, times: 1, at: clock.now)
        #expect(lb.state(of: a)?.health == .idle)
    }

    @Test func windowCheckAtIdleTimeout() {
        var clock = MockClock()
        // Thresholds out of the way so only the window can overload.
        let settings = BalancerSettings(errRate: 1, continErrLimit: 1000)
        var lb = RouteBalancer(settings: settings, hosts: [a, b], now: clock.now)
        // a: 8 errors, 2 successes in the window (0.8 > 0.7); b: 7 errors, 3 successes (0.7, not above).
        for _ in 0..<2 { lb.report(host: a, success: true, now: clock.now) }
        fail(&lb, a, times: 8, at: clock.now)
        for _ in 0..<3 { lb.report(host: b, success: true, now: clock.now) }
        fail(&lb, b, times: 7, at: clock.now)
        clock.advance(.seconds(14))
        lb.report(host: a, success: true, now: clock.now)  // 8/11: still inside the window
        #expect(lb.state(of: a)?.health == .idle)
        clock.advance(.seconds(1))
        fail(&lb, a, times: 1, at: clock.now)  // 9/12 = 0.75 at 15 s
        #expect(lb.state(of: a)?.health == .overloaded)
        lb.report(host: b, success: true, now: clock.now)  // 7/11 = 0.64: a new window, counters reset
        let s = lb.state(of: b)!
        #expect(s.health == .idle && s.realErrors == 0 && s.realSuccesses == 0 && s.since == clock.now)
        #expect(s.virtualSuccesses == 180 && s.virtualErrors == 0)
    }

    @Test func overloadTimeoutForcesRecovery() {
        var clock = MockClock()
        var lb = RouteBalancer(hosts: [a, b], now: clock.now)
        fail(&lb, a, times: 10, at: clock.now)
        clock.advance(.seconds(14))
        #expect(lb.pick(now: clock.now) == .host(b))
        #expect(lb.state(of: a)?.health == .overloaded)
        clock.advance(.seconds(1))
        // On pick, with no report: a is idle again and served in turn.
        #expect(Set([lb.pick(now: clock.now), lb.pick(now: clock.now)]) == [.host(a), .host(b)])
        #expect(lb.state(of: a)?.health == .idle)
        // On report too: a probe's failure after the timeout still brings the host back.
        fail(&lb, b, times: 10, at: clock.now)
        clock.advance(.seconds(15))
        lb.report(host: b, success: false, now: clock.now)
        #expect(lb.state(of: b)?.health == .idle)
    }

    @Test func setHostsKeepsAndDropsState() {
        let clock = MockClock()
        var lb = RouteBalancer(hosts: [a, b], now: clock.now)
        fail(&lb, a, times: 10, at: clock.now)
        lb.report(host: b, success: false, now: clock.now)
        lb.setHosts([a, c], now: clock.now)
        #expect(lb.state(of: b) == nil)
        #expect(lb.state(of: a)?.health == .overloaded)
        #expect(lb.state(of: c)?.health == .idle)
        #expect(Set(lb.hosts) == [a, c])
        // b never comes back from pick, and its unreported calls are gone.
        for _ in 0..<25 { #expect(lb.pick(now: clock.now).host != b) }
        #expect(!lb.takeReportSummary().contains { $0.host == b })
        // Reports for a removed host are ignored.
        lb.report(host: b, success: true, now: clock.now)
        #expect(lb.state(of: b) == nil)
        // Re-adding b starts it fresh.
        lb.setHosts([a, b, c], now: clock.now)
        #expect(lb.state(of: b)?.consecutiveErrors == 0 && lb.state(of: b)?.health == .idle)
        lb.setHosts([], now: clock.now)
        #expect(lb.isEmpty && lb.pick(now: clock.now) == .empty)
    }

    /// Lars's semantics (PROTOCOL.md, call reports): every host, with the running counts of its current window.
    @Test func reportSummaryHasEveryHostWithItsWindowCounts() {
        var clock = MockClock()
        var lb = RouteBalancer(hosts: [a, b, c], now: clock.now)
        #expect(!lb.hasUnreportedCalls)
        succeed(&lb, a, times: 3, at: clock.now)
        lb.report(host: a, retcode: 1, now: clock.now)
        // b's tenth error in a row overloads it; its counters restart with its overload period, as Lars's do.
        fail(&lb, b, times: 10, at: clock.now)
        #expect(lb.hasUnreportedCalls)
        #expect(lb.takeReportSummary() == [
            HostCallSummary(host: a, successes: 3, errors: 1, overloaded: false),
            HostCallSummary(host: c, successes: 0, errors: 0, overloaded: false),
            HostCallSummary(host: b, successes: 0, errors: 0, overloaded: true),
        ])
        #expect(!lb.hasUnreportedCalls)
        // Within the window the counts go on growing: a report is not the calls since the previous one.
        succeed(&lb, a, times: 2, at: clock.now)
        lb.report(host: b, success: false, now: clock.now)
        let second = lb.takeReportSummary()
        #expect(second.first { $0.host == a } == HostCallSummary(host: a, successes: 5, errors: 1, overloaded: false))
        #expect(second.first { $0.host == b } == HostCallSummary(host: b, successes: 0, errors: 1, overloaded: true))
        #expect(second.count == 3)
        // The call that ends a's 15 s window starts a new one: a's counts restart from zero.
        clock.advance(.seconds(15))
        lb.report(host: a, success: true, now: clock.now)
        succeed(&lb, a, times: 2, at: clock.now)
        #expect(lb.takeReportSummary().first { $0.host == a }
                    == HostCallSummary(host: a, successes: 2, errors: 0, overloaded: false))
    }
}
