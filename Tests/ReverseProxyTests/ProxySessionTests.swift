import LoadBalanceClient
import LoadBalancing
import Reactor
import Testing
@testable import ReverseProxy

@Suite("Proxy session: the pure core of one client connection")
struct ProxySessionTests {
    let a = Host(address: "10.0.0.1", port: 9000)!
    let b = Host(address: "10.0.0.2", port: 9000)!
    let c = Host(address: "10.0.0.3", port: 9000)!

    func outcome(_ end: TunnelEnd, up: UInt64 = 10, down: UInt64 = 10) -> TunnelOutcome {
        TunnelOutcome(end: end, clientToServerBytes: up, serverToClientBytes: down)
    }

    @Test("accept, a host, connect, a finished tunnel: the host is reported a success")
    func happyPath() {
        var session = ProxySession(key: Array("127.0.0.2".utf8), attempts: 3)
        #expect(session.handle(.accepted) == [.askAgent(key: Array("127.0.0.2".utf8))])
        #expect(session.handle(.agentAnswered(.host(a))) == [.connect(a)])
        #expect(session.handle(.connected) == [.startTunnel(a)])
        #expect(session.handle(.tunnelEnded(outcome(.finished))) == [.report(a, success: true), .finished])
        #expect(session.state == .done)
        // Late events change nothing.
        #expect(session.handle(.connected) == [])
        #expect(session.handle(.agentAnswered(.host(b))) == [])
    }

    @Test("a failed connect is reported a failure and the agent is asked again without the key, up to the attempts")
    func retriesOtherHosts() {
        var session = ProxySession(key: [1, 2, 3], attempts: 3)
        _ = session.handle(.accepted)
        _ = session.handle(.agentAnswered(.host(a)))
        #expect(session.handle(.connectFailed("refused")) == [.report(a, success: false), .askAgent(key: nil)])
        // The agent offers the failed host again: skipped, asked once more (not counted as a host tried).
        #expect(session.handle(.agentAnswered(.host(a))) == [.askAgent(key: nil)])
        #expect(session.handle(.agentAnswered(.host(a))) == [.askAgent(key: nil)])
        #expect(session.handle(.agentAnswered(.host(b))) == [.connect(b)])
        #expect(session.failedHosts == [a])
        #expect(session.handle(.connectFailed("refused")) == [.report(b, success: false), .askAgent(key: nil)])
        #expect(session.handle(.agentAnswered(.host(c))) == [.connect(c)])
        #expect(session.handle(.connected) == [.startTunnel(c)])
    }

    @Test("an agent that keeps offering a failed host: the asks are bounded")
    func boundedAsks() {
        var session = ProxySession(key: nil, attempts: 2)
        _ = session.handle(.accepted)
        _ = session.handle(.agentAnswered(.host(a)))
        _ = session.handle(.connectFailed("refused"))
        var asks = 1
        while session.handle(.agentAnswered(.host(a))) == [.askAgent(key: nil)] { asks += 1 }
        #expect(session.state == .done)
        #expect(asks == session.maxAsks - 1)
    }

    @Test("every attempt fails: the last host is reported and the client refused")
    func allBackendsFail() {
        var session = ProxySession(key: nil, attempts: 2)
        _ = session.handle(.accepted)
        _ = session.handle(.agentAnswered(.host(a)))
        _ = session.handle(.connectFailed("refused"))
        #expect(session.handle(.agentAnswered(.host(b))) == [.connect(b)])
        #expect(session.handle(.connectFailed("timed out")) == [
            .report(b, success: false), .refuse(.backendsFailed(attempts: 2, lastError: "timed out")), .finished,
        ])
        #expect(session.failedHosts == [a, b])
    }

    @Test("no host from the agent, or no agent: refused at once, nothing reported")
    func noHost() {
        for answer in [GetHostResult.overloaded, .noSuchModule, .systemError] {
            var session = ProxySession(key: nil, attempts: 3)
            _ = session.handle(.accepted)
            #expect(session.handle(.agentAnswered(answer)) == [.refuse(.noHost(answer)), .finished])
        }
        var session = ProxySession(key: nil, attempts: 3)
        _ = session.handle(.accepted)
        #expect(session.handle(.agentFailed("timeout")) == [.refuse(.agentUnavailable("timeout")), .finished])
    }

    @Test("the backend's part in a tunnel's end")
    func outcomes() {
        let reset = IOError(errnoCode: 104, call: "read")
        #expect(ProxySession.backendSucceeded(outcome(.finished, down: 0)) == true)
        #expect(ProxySession.backendSucceeded(outcome(.failed(.server, reset), down: 0)) == false)
        #expect(ProxySession.backendSucceeded(outcome(.failed(.server, reset), down: 5)) == true)
        #expect(ProxySession.backendSucceeded(outcome(.failed(.client, reset), down: 0)) == true)
        #expect(ProxySession.backendSucceeded(outcome(.idleTimeout, down: 0)) == false)
        #expect(ProxySession.backendSucceeded(outcome(.idleTimeout, down: 1)) == true)
        #expect(ProxySession.backendSucceeded(outcome(.closed, down: 0)) == nil)
        var session = ProxySession(key: nil, attempts: 1)
        _ = session.handle(.accepted)
        _ = session.handle(.agentAnswered(.host(c)))
        _ = session.handle(.connected)
        #expect(session.handle(.tunnelEnded(outcome(.closed, down: 0))) == [.finished])
    }

    @Test("PROXY headers, v1 text and v2 binary, byte for byte")
    func proxyHeaders() {
        let client = Host(address: "127.0.0.2", port: 40000)!
        let proxy = Host(address: "127.0.0.1", port: 8080)!
        #expect(ProxyHeader.encode(.v1, client: client, proxy: proxy)
            == Array("PROXY TCP4 127.0.0.2 127.0.0.1 40000 8080\r\n".utf8))
        let v2 = ProxyHeader.encode(.v2, client: client, proxy: proxy)
        #expect(v2 == [0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A, 0x21, 0x11, 0x00, 0x0C,
                       127, 0, 0, 2, 127, 0, 0, 1, 0x9C, 0x40, 0x1F, 0x90])
    }
}

@Suite("Spare hosts: picks asked ahead of the connections that use them")
struct SpareHostsTests {
    let a = Host(address: "10.0.0.1", port: 9000)!
    let b = Host(address: "10.0.0.2", port: 9000)!

    @Test("asks up to the target, hands out fresh hosts in order, drops stale ones and answers without a host")
    func freshHostsOnly() {
        var spares = SpareHosts(limit: 3, maxAgeNanoseconds: 1_000)
        #expect(spares.target == 3, "the limit, below the initial target")
        #expect(spares.take(now: 0) == nil)
        #expect(spares.toAsk(now: 0) == 3)
        #expect(spares.toAsk(now: 0) == 0, "three asked already")
        spares.answered(a, now: 100)
        spares.answered(nil, now: 110)  // the agent had no host: nothing kept
        spares.answered(b, now: 2_000)
        #expect(spares.count == 2 && spares.asked == 0)
        #expect(spares.toAsk(now: 2_000) == 0, "more than half the target in hand")
        // `a` is 2,000 ns old at 2,100: past the bound, dropped; `b` is fresh.
        #expect(spares.take(now: 2_100) == b)
        #expect(spares.target == 1, "a stale pick halves the target")
        #expect(spares.take(now: 2_100) == nil)
        #expect(spares.toAsk(now: 2_100) == 1, "nothing in hand or asked: the whole target")
    }

    @Test("refills once half the target is used, all that is missing at once")
    func refillsAtHalf() {
        var spares = SpareHosts(limit: 4, maxAgeNanoseconds: 1_000_000)
        #expect(spares.toAsk(now: 0) == 4)
        for host in [a, b, a, b] { spares.answered(host, now: 0) }
        #expect(spares.take(now: 10) == a)
        #expect(spares.toAsk(now: 10) == 0, "three in hand")
        #expect(spares.take(now: 10) == b)
        #expect(spares.toAsk(now: 10) == 2, "two in hand: two more in one request")
        #expect(spares.take(now: 10) == a && spares.take(now: 10) == b)
        #expect(spares.toAsk(now: 10) == 2, "none in hand, two asked: the other two")
        #expect(spares.toAsk(now: 10) == 0, "four asked")
        for host in [a, b, a, b] { spares.answered(host, now: 20) }
        #expect(spares.count == 4 && spares.asked == 0 && spares.toAsk(now: 20) == 0)
        #expect(spares.target == 4, "never above the limit")
    }

    @Test("the target doubles while refills come fast, up to the limit, and halves on stale picks, down to 1")
    func followsTheRate() {
        let maxAge: UInt64 = 1_000_000
        var spares = SpareHosts(limit: 32, maxAgeNanoseconds: maxAge)
        #expect(spares.target == SpareHosts.initialTarget)
        var now: UInt64 = 0
        var targets: [Int] = []
        // A busy route: every refill comes 1% of the age bound after the last; each batch is used up at once.
        for _ in 0..<6 {
            let n = spares.toAsk(now: now)
            for _ in 0..<n { spares.answered(a, now: now) }
            while spares.take(now: now) != nil {}
            targets.append(spares.target)
            now += maxAge / 100
        }
        #expect(targets == [4, 8, 16, 32, 32, 32])
        // A slow refill (past an eighth of the bound) keeps the target.
        now += maxAge / 4
        #expect(spares.toAsk(now: now) == 32 && spares.target == 32)
        for _ in 0..<32 { spares.answered(b, now: now) }
        // The route goes quiet: the picks age past the bound, and each stale find halves the target.
        now += 2 * maxAge
        #expect(spares.take(now: now) == nil)
        #expect(spares.target == 16)
        var halvings: [Int] = []
        for _ in 0..<6 {
            let n = spares.toAsk(now: now)
            for _ in 0..<n { spares.answered(b, now: now) }
            now += 2 * maxAge
            _ = spares.take(now: now)
            halvings.append(spares.target)
        }
        #expect(halvings == [8, 4, 2, 1, 1, 1])
    }

    @Test("a limit of zero never asks")
    func zeroTarget() {
        var spares = SpareHosts(limit: 0, maxAgeNanoseconds: 1_000)
        #expect(spares.toAsk(now: 0) == 0)
        spares.answered(a, now: 0)
        #expect(spares.take(now: 0) == nil)
        #expect(spares.target == 0)
    }
}
