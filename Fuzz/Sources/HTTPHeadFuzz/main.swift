// libFuzzer target for the media relay's HTTP request head parser (HTTPHeadParser). Built by scripts/fuzz
// (Fuzz/Package.swift).
//
// Input: one byte picks the head bound, one byte the number of split points, two bytes per split point, then the
// bytes a player would send. They are fed whole, in pieces cut at the split points (empty pieces included), and one
// byte at a time. Checked: the three feeds give the same result (the same head or the same error, or nothing yet);
// the result agrees with the end of the head found by a plain scan (the first empty line: LF LF or CRLF CRLF) and
// with the bound (a head or bytes without an end longer than it are `headTooLarge`, nothing else is); a parsed head
// keeps to what the parser documents (method a token, an absolute path, HTTP/1.0 or 1.1, query names non-empty,
// header names lowercased tokens, values trimmed and free of control bytes); the bytes after the head are handed
// back exactly; a parsed head written out again parses to itself.
import FuzzSupport
@testable import MediaRelay

/// Head bounds the first byte picks from: tiny ones make the bound reachable within libFuzzer's 4 KiB inputs.
let bounds = [1, 16, 64, 256, 1024, HTTPHeadParser.defaultMaxHeadBytes]

/// What a feed ended with.
enum Outcome: Equatable {
    /// A head, and every byte after it (what the parser handed back plus what was never fed).
    case head(HTTPRequestHead, after: [UInt8])
    case refused(HTTPHeadError)
    case incomplete
}

/// Feeds `pieces` in order to a fresh parser and stops at its first answer.
func feed(_ pieces: [ArraySlice<UInt8>], bound: Int) -> Outcome {
    var parser = HTTPHeadParser(maxHeadBytes: bound)
    for (index, piece) in pieces.enumerated() {
        do {
            if let (head, rest) = try parser.feed(piece) {
                return .head(head, after: rest + pieces[(index + 1)...].joined())
            }
        } catch {
            return .refused(error)
        }
    }
    return .incomplete
}

/// The end of the head (the index after its empty line), by a plain scan of the whole input.
func referenceEnd(_ bytes: [UInt8]) -> Int? {
    for i in bytes.indices where bytes[i] == 0x0A {
        if i >= 1 && bytes[i - 1] == 0x0A { return i + 1 }
        if i >= 3 && bytes[i - 3] == 0x0D && bytes[i - 2] == 0x0A && bytes[i - 1] == 0x0D { return i + 1 }
    }
    return nil
}

func isToken(_ text: String) -> Bool { !text.isEmpty && text.utf8.allSatisfy(HTTPHeadParser.isTokenByte) }

/// The head as a request would carry it: one canonical spelling.
func render(_ head: HTTPRequestHead) -> [UInt8] {
    var target = head.path
    if !head.query.isEmpty { target += "?" + head.query.map { "\($0.0)=\($0.1)" }.joined(separator: "&") }
    var text = "\(head.method) \(target) \(head.version)\r\n"
    for (name, value) in head.headers { text += "\(name): \(value)\r\n" }
    return Array((text + "\r\n").utf8)
}

/// What the parser documents of a head it accepted.
func checkFields(_ head: HTTPRequestHead) {
    invariant(isToken(head.method), "method \(head.method.debugDescription) is not a token")
    invariant(head.path.hasPrefix("/"), "path \(head.path.debugDescription) is not absolute")
    invariant(!head.path.contains("?"), "path \(head.path.debugDescription) kept the query")
    invariant(head.path.utf8.allSatisfy { $0 > 0x20 && $0 < 0x7F }, "path has a byte outside the target's range")
    invariant(head.version == "HTTP/1.0" || head.version == "HTTP/1.1", "version \(head.version) accepted")
    for (name, value) in head.query {
        invariant(!name.isEmpty && !name.contains("&") && !name.contains("="), "query name \(name.debugDescription)")
        invariant(!value.contains("&"), "query value \(value.debugDescription) spans pairs")
    }
    for (name, value) in head.headers {
        invariant(isToken(name) && name == name.lowercased(), "header name \(name.debugDescription)")
        let bytes = Array(value.utf8)
        invariant(bytes.first.map { $0 != 0x20 && $0 != 0x09 } ?? true, "header value starts with whitespace")
        invariant(bytes.last.map { $0 != 0x20 && $0 != 0x09 } ?? true, "header value ends with whitespace")
        invariant(bytes.allSatisfy { ($0 >= 0x20 || $0 == 0x09) && $0 != 0x7F }, "header value has a control byte")
    }
    for (name, _) in head.headers {
        invariant(head.header(name.uppercased()) != nil, "header(_:) does not find \(name) case-insensitively")
    }
}

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzz(_ data: UnsafePointer<UInt8>, _ size: Int) -> Int32 {
    let all = Array(UnsafeBufferPointer(start: data, count: size))
    guard all.count >= 2 else { return 0 }
    let bound = bounds[Int(all[0]) % bounds.count]
    let splitCount = Int(all[1]) % 16
    let splitBytes = min(2 * splitCount, all.count - 2)
    let header = all[2..<(2 + splitBytes)]
    let bytes = Array(all[(2 + splitBytes)...])
    var cuts: [Int] = stride(from: header.startIndex, to: header.endIndex - 1, by: 2).map { i in
        (Int(header[i]) | Int(header[i + 1]) << 8) % (bytes.count + 1)
    }
    cuts.sort()

    let whole = feed([bytes[...]], bound: bound)
    var pieces: [ArraySlice<UInt8>] = []
    var from = 0
    for cut in cuts + [bytes.count] {
        pieces.append(bytes[from..<cut])
        from = cut
    }
    let split = feed(pieces, bound: bound)
    let drip = feed(bytes.indices.map { bytes[$0...$0] }, bound: bound)
    invariant(split == whole, "fed in pieces at \(cuts): \(split), whole: \(whole)")
    invariant(drip == whole, "fed one byte at a time: \(drip), whole: \(whole)")

    let end = referenceEnd(bytes)
    switch whole {
    case .incomplete:
        invariant(end == nil, "the head ends at \(end!) but the parser waits for more")
        invariant(bytes.count <= bound, "\(bytes.count) bytes without an end, over the bound \(bound), not refused")
    case .refused(.headTooLarge):
        invariant(end.map { $0 > bound } ?? (bytes.count > bound),
                  "headTooLarge: end \(String(describing: end)) of \(bytes.count) bytes, bound \(bound)")
    case .refused:
        invariant(end.map { $0 <= bound } ?? false, "a head ending at \(String(describing: end)) judged (\(bound))")
    case .head(let head, let after):
        guard let end else {
            invariant(false, "a head parsed from bytes without an empty line")
            return 0
        }
        invariant(end <= bound, "a head of \(end) bytes accepted over the bound \(bound)")
        invariant(after == Array(bytes[end...]), "the bytes after the head were not handed back exactly")
        checkFields(head)
        // Written out again (within the default bound), the head parses to itself.
        let again = feed([render(head)[...]], bound: HTTPHeadParser.defaultMaxHeadBytes)
        if render(head).count <= HTTPHeadParser.defaultMaxHeadBytes {
            invariant(again == .head(head, after: []), "the head written out parses to \(again), not itself")
        }
    }
    return 0
}
