import LarsProtocol
import LoadBalanceAgent
import LoadBalancing
import Testing

/// Report batches (id 106) in the agent's core, without sockets: a batch counts as the single reports it stands for.
@Suite("Agent core: report batches (no sockets, mock clock)")
struct ReportBatchCoreTests {
    typealias Harness = AgentCoreTests.Harness

    /// A batch of `runs` (host, successes, errors) for `key`.
    static func batch(_ key: RouteKey, _ runs: [(Host, UInt32, UInt32)]) -> Lars_ReportStatusRequest {
        var request = Lars_ReportStatusRequest()
        request.modid = key.modid
        request.cmdid = key.cmdid
        request.results = runs.map { host, succ, err in
            var result = Lars_HostCallResult()
            result.ip = host.wireIP
            result.port = Int32(host.port)
            result.succ = succ
            result.err = err
            return result
        }
        return request
    }

    static func ready(_ configure: (inout AgentConfiguration) -> Void = { _ in }) -> Harness {
        var h = Harness(configure)
        _ = h.getHost(route12)
        _ = h.arrive(route12, [h1, h2])
        return h
    }

    /// What the reporter would be told about each host of route12.
    static func summary(_ h: inout Harness) -> [Host: (succ: UInt32, err: UInt32, overload: Bool)] {
        let reports = h.run { $0.flushReports(timestamp: 1_700_000_000, actions: &$2) }.compactMap(\.report)
        var out: [Host: (succ: UInt32, err: UInt32, overload: Bool)] = [:]
        for line in reports.first?.results ?? [] {
            out[Host(wireIP: line.ip, wirePort: line.port)!] = (line.succ, line.err, line.overload)
        }
        return out
    }

    @Test("a batch counts as its single reports in order: the same windows, counts and overloads")
    func sameAsSingles() {
        // h1: 7 successes, 12 failures (past contin_err_limit 10: overloaded), 3 successes; h2: 40 successes.
        let sequence: [(Host, Bool, Int)] = [(h1, true, 7), (h2, true, 20), (h1, false, 12), (h1, true, 3),
                                             (h2, true, 20)]
        var singles = Self.ready()
        for (host, success, count) in sequence {
            for _ in 0..<count { singles.report(route12, host, success: success) }
        }
        var batched = Self.ready()
        let request = Self.batch(route12, sequence.map { host, success, count in
            (host, success ? UInt32(count) : 0, success ? 0 : UInt32(count))
        })
        _ = batched.run { $0.reportBatch(request, source: Harness.loopback, now: $1, actions: &$2) }

        let expected = Self.summary(&singles)
        let got = Self.summary(&batched)
        #expect(expected[h1]?.overload == true, "the single reports should overload h1: \(expected)")
        #expect(Set(got.keys) == Set(expected.keys))
        for host in [h1, h2] {
            #expect(got[host]?.succ == expected[host]?.succ && got[host]?.err == expected[host]?.err
                    && got[host]?.overload == expected[host]?.overload, "\(host): \(String(describing: got[host]))")
        }
        #expect(batched.core.statistics.reportRequests == 62 && batched.core.statistics.reportBatchRequests == 1)
        // The overloaded host is avoided by GetHost as after the single reports.
        for _ in 0..<5 { #expect(batched.answer(route12)?.host == Lars_HostInfo(h2)) }
    }

    @Test("a result with successes and errors counts its successes first")
    func successesThenErrors() {
        var h = Self.ready()
        let request = Self.batch(route12, [(h1, 3, 10)])
        _ = h.run { $0.reportBatch(request, source: Harness.loopback, now: $1, actions: &$2) }
        let line = Self.summary(&h)[h1]
        // 10 errors in a row after the successes: overloaded (3 errors then 10 successes would not be).
        #expect(line?.overload == true)
    }

    @Test("too many results, too many reports, or none: dropped whole, counted, logged once; unknown ones ignored")
    func bounds() {
        var h = Self.ready()
        let most = AgentCoreTests.Core.maxReportBatchResults
        let tooMany = Self.batch(route12, Array(repeating: (h1, 1, 0), count: most + 1))
        let tooLarge = Self.batch(route12, [(h1, UInt32(AgentCoreTests.Core.maxReportsPerBatch), 1)])
        let empty = Self.batch(route12, [])
        var logs = 0
        for request in [tooMany, tooLarge, empty] {
            let actions = h.run { $0.reportBatch(request, source: Harness.loopback, now: $1, actions: &$2) }
            logs += actions.count { if case .log(.reportBatchRefused) = $0 { true } else { false } }
        }
        #expect(h.core.statistics.reportBatchesRefused == 3 && h.core.statistics.reportRequests == 0)
        #expect(logs == 1, "one log line for the episode")
        #expect(h.run { $0.flushReports(timestamp: 1, actions: &$2) }.isEmpty)
        // At the bounds: taken.
        let full = Self.batch(route12, Array(repeating: (h1, 64, 0), count: AgentCoreTests.Core.maxReportBatchResults))
        _ = h.run { $0.reportBatch(full, source: Harness.loopback, now: $1, actions: &$2) }
        #expect(Self.summary(&h)[h1]?.succ == 4096)
        // A host the route does not have, a module the agent does not know: nothing counted for them.
        let stranger = Host(ip: 0x0A00_0009, port: 9000)
        let unknownHost = Self.batch(route12, [(stranger, 5, 0)])
        let unknownModule = Self.batch(RouteKey(modid: 99, cmdid: 9), [(h1, 5, 0)])
        for request in [unknownHost, unknownModule] {
            _ = h.run { $0.reportBatch(request, source: Harness.loopback, now: $1, actions: &$2) }
        }
        let after = Self.summary(&h)
        #expect(after[stranger] == nil && after[h1]?.succ == 4096)
    }

    @Test("with a report secret: a batch without it, or with a wrong one, is rejected whole and logged once")
    func secret() {
        var h = Self.ready { $0.reportSecret = "s3cret" }
        let request = Self.batch(route12, [(h1, 4, 1)])
        var logs = 0
        for secret in [nil, Array("wrong".utf8)] {
            let actions = h.run { $0.reportBatch(request, secret: secret, source: Harness.loopback, now: $1,
                                                 actions: &$2) }
            logs += actions.count { if case .log = $0 { true } else { false } }
        }
        #expect(logs == 1)
        #expect(h.core.statistics.reportsRejected == 10)
        _ = h.run { $0.reportBatch(request, secret: Array("s3cret".utf8), source: Harness.loopback, now: $1,
                                   actions: &$2) }
        let line = Self.summary(&h)[h1]
        #expect(line?.succ == 4 && line?.err == 1)
    }
}
