// libFuzzer target for the reporter: its one route (ReportStatusRequest) registered on a MessageRouter the way
// Reporter registers it, turning each report into rows as the handler does and merging queued batches as the writer
// does before its upsert. Built by scripts/fuzz (swift build --sanitize=fuzzer --sanitize=address in Fuzz/); the
// row functions are internal (@testable import).
//
// Checked: a report gives one row per result with a port in range, carrying the report's route and caller; merging
// keeps one row per key and adds the counts (wrapping, as the upsert's columns would).
import FuzzSupport
import LarsProtocol
import Messaging
@testable import Reporter

final class Queue: @unchecked Sendable {
    // @unchecked Sendable: libFuzzer runs one input at a time on one thread.
    var rows: [Reporter.Row] = []
    var reports = 0
}

func body(_ input: inout FuzzInput) -> [UInt8] {
    if input.choice(4) == 0 { return input.bytes() }
    var m = Lars_ReportStatusRequest()
    (m.modid, m.cmdid, m.caller) = (Int32(input.choice(3)), Int32(input.choice(2)), Int32(input.choice(2)))
    m.ts = input.choice(2) == 0 ? 0 : input.uint32()
    m.results = (0..<input.choice(8)).map { _ in
        var r = Lars_HostCallResult()
        r.ip = Int32(input.choice(3))
        r.port = input.choice(8) == 0 ? Int32(bitPattern: input.uint32()) : Int32(input.choice(3))
        (r.succ, r.err, r.overload) = (input.uint32(), input.uint32(), input.choice(2) == 0)
        return r
    }
    return try! m.serializedBytes()
}

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzz(_ data: UnsafePointer<UInt8>, _ size: Int) -> Int32 {
    var input = FuzzInput(data, size)
    let queue = Queue()
    let router = MessageRouter<Int>()
    let now = UInt32(1_700_000_000)
    try! router.on(MessageID.reportStatusRequest, as: Lars_ReportStatusRequest.self) { request, _ in
        let rows = Reporter.rows(of: request, now: now)
        let inRange = request.results.filter { (0...65535).contains($0.port) }
        invariant(rows.count == inRange.count, "\(rows.count) rows for \(inRange.count) results in range")
        for (row, result) in zip(rows, inRange) {
            invariant(row.key.modid == request.modid && row.key.cmdid == request.cmdid
                      && row.key.caller == request.caller && row.key.port == result.port
                      && row.succ == result.succ && row.err == result.err, "a row that is not its result")
            invariant(row.ts == (request.ts != 0 ? request.ts : now), "a row with the wrong time")
        }
        queue.rows += rows
        queue.reports += 1
    }
    router.freeze()
    while !input.isAtEnd {
        if input.choice(6) == 0 {
            let merged = Reporter.merge(queue.rows)
            invariant(Set(merged.map(\.key)).count == merged.count, "merged rows with the same key")
            invariant(Set(merged.map(\.key)) == Set(queue.rows.map(\.key)), "merging lost or made up a key")
            for row in merged {
                let same = queue.rows.filter { $0.key == row.key }
                invariant(row.succ == same.reduce(0) { $0 &+ $1.succ } && row.err == same.reduce(0) { $0 &+ $1.err },
                          "merged counts are not the sums")
                invariant(row.ts == same.map(\.ts).max(), "merged row does not keep the latest time")
            }
            queue.rows.removeAll()
        } else {
            let id = messageID(&input, routed: [MessageID.reportStatusRequest.rawValue])
            dispatch(router, id: id, body: body(&input), connection: 0)
        }
    }
    return 0
}
