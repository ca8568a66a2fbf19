import LarsProtocol
import LarsWire
import LoadBalancing

/// Call outcomes held for report batches (id 106): per module, runs of one host's outcomes in call order, so that a
/// batch counts at the agent exactly as the single reports would have in the order they were made (a host's
/// successes, then its failure, then its next successes). Across hosts the order does not matter to the agent: each
/// host's counters are its own. Pure: ``LoopLoadBalanceClient`` decides when to send.
struct ReportTally {
    struct Module: Hashable {
        let modid: Int32
        let cmdid: Int32
    }

    struct Run: Equatable {
        let host: Host
        let success: Bool
        var count: Int
    }

    /// The results one batch carries at most (the agent drops a larger one: ``maxResults``).
    static let maxResults = 64
    /// The reports one batch carries at most (the agent's `maxReportsPerBatch`).
    static let maxReports = 4096

    private(set) var runs: [Module: [Run]] = [:]
    /// Reports held, in all.
    private(set) var reports = 0
    /// A failure is held (it should go at the end of the loop's iteration, not after the hold).
    private(set) var holdsFailure = false

    var isEmpty: Bool { reports == 0 }

    /// Adds one call's outcome; true when the tally is full (send now): a module has ``maxResults`` runs, or the
    /// tally holds ``maxReports`` reports in all (which bounds every run, every module's batch, and the modules).
    mutating func add(_ module: Module, host: Host, success: Bool) -> Bool {
        reports += 1
        if !success { holdsFailure = true }
        let results = Self.record(&runs[module, default: []], host: host, success: success)
        return results >= Self.maxResults || reports >= Self.maxReports
    }

    /// Adds the outcome to the host's last run when it has the same outcome, else starts a run; the module's run
    /// count after it. (In place: the list is not copied out of the dictionary.)
    private static func record(_ list: inout [Run], host: Host, success: Bool) -> Int {
        if let last = list.lastIndex(where: { $0.host == host }), list[last].success == success {
            list[last].count += 1
        } else {
            list.append(Run(host: host, success: success, count: 1))
        }
        return list.count
    }

    /// Everything held, one entry per module, and the tally empty again.
    mutating func take() -> [(module: Module, runs: [Run])] {
        defer {
            runs.removeAll(keepingCapacity: true)
            reports = 0
            holdsFailure = false
        }
        return runs.map { ($0.key, $0.value) }
    }

    /// The frame of one module's batch (a `Lars_ReportStatusRequest` body; the secret, when given, as field 15).
    static func frame(_ module: Module, runs: [Run], secret: [UInt8]?) -> [UInt8]? {
        var request = Lars_ReportStatusRequest()
        request.modid = module.modid
        request.cmdid = module.cmdid
        request.results = runs.map { run in
            var result = Lars_HostCallResult()
            result.ip = run.host.wireIP
            result.port = Int32(run.host.port)
            if run.success { result.succ = UInt32(run.count) } else { result.err = UInt32(run.count) }
            return result
        }
        guard var body: [UInt8] = try? request.serializedBytes() else { return nil }
        if let secret { body = ReportSecret.appending(secret, to: body) }
        return FrameParser.encode(messageID: MessageID.reportBatchRequest.rawValue, body: body)
    }
}
