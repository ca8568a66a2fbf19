// libFuzzer target for the reporter: its one route (ReportStatusRequest) registered on a MessageRouter the way
// Reporter registers it, turning each report into rows as the handler does and merging queued batches as the writer
// does before its upsert. Built by scripts/fuzz (swift build --sanitize=fuzzer --sanitize=address in Fuzz/); the
// row functions are internal (@testable import).
//
// Checked: a report gives one row per result with a port in range, carrying the report's route and caller (the bits
// of the int32 field, read unsigned); merging keeps one row per key, the last one that came (the upsert overwrites:
// a report carries running window counts, Lars's semantics), and the statement's parameters are unsigned and capped
// as Lars's columns want.
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
    (m.modid, m.cmdid) = (Int32(input.choice(3)), Int32(input.choice(2)))
    // Callers from 128.0.0.0 up are negative in the int32 field.
    m.caller = input.choice(3) == 0 ? Int32(bitPattern: input.uint32()) : Int32(input.choice(2))
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
                      && row.key.caller == UInt32(bitPattern: request.caller) && row.key.port == result.port
                      && row.succ == result.succ && row.err == result.err, "a row that is not its result")
            invariant(row.ts == (request.ts != 0 ? request.ts : now), "a row with the wrong time")
            let p = row.parameters
            invariant(p.count == 9 && p[2] == .integer(Int64(row.key.ip)) && p[4] == .integer(Int64(row.key.caller))
                      && p[5] == .integer(Int64(min(row.succ, UInt32(Int32.max))))
                      && p[6] == .integer(Int64(min(row.err, UInt32(Int32.max)))), "parameters not unsigned or capped")
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
                invariant(row == queue.rows.last { $0.key == row.key }, "a merged row that is not its key's last")
            }
            queue.rows.removeAll()
        } else {
            let id = messageID(&input, routed: [MessageID.reportStatusRequest.rawValue])
            dispatch(router, id: id, body: body(&input), connection: 0)
        }
    }
    return 0
}
