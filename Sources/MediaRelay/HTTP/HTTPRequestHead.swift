/// The request head of HTTP/1.1 as far as a player needs it: the method, the target's path and query, the
/// version, and the headers, parsed from bytes fed in any pieces (RFC 9112 section 2-3, 5). The head is bounded
/// (`maxHeadBytes`, 8 KiB by default: longer is `headTooLarge`, answered 431); anything malformed is `badRequest`
/// (400). Bodies are not read here: the caller takes the bytes after the head (`bodyStart`).
public struct HTTPRequestHead: Sendable, Equatable {
    public var method: String
    /// The path of the target, percent-decoding not applied (`/live/movie.ts`).
    public var path: String
    /// The query after `?`, as name/value pairs (empty names skipped).
    public var query: [(String, String)]
    /// `HTTP/1.0` or `HTTP/1.1`.
    public var version: String
    /// Header fields in order, names lowercased.
    public var headers: [(String, String)]

    public static func == (a: Self, b: Self) -> Bool {
        a.method == b.method && a.path == b.path && a.version == b.version
            && a.query.map { [$0.0, $0.1] } == b.query.map { [$0.0, $0.1] }
            && a.headers.map { [$0.0, $0.1] } == b.headers.map { [$0.0, $0.1] }
    }

    /// The first value of a header (name case-insensitive).
    public func header(_ name: String) -> String? {
        let lower = name.lowercased()
        return headers.first { $0.0 == lower }?.1
    }

    /// The first value of a query parameter.
    public func queryValue(_ name: String) -> String? { query.first { $0.0 == name }?.1 }
}

/// Why a request head was refused, with the status to answer.
public enum HTTPHeadError: Error, Equatable, Sendable {
    /// 400: not a request line and headers.
    case badRequest(String)
    /// 431: the head is longer than the bound.
    case headTooLarge
    /// 505: a version other than HTTP/1.0 or 1.1.
    case versionNotSupported

    public var status: Int {
        switch self {
        case .badRequest: return 400
        case .headTooLarge: return 431
        case .versionNotSupported: return 505
        }
    }
}

/// Accumulates bytes until a whole head (ending in an empty line) is there, then parses it.
public struct HTTPHeadParser {
    public static let defaultMaxHeadBytes = 8 << 10
    public let maxHeadBytes: Int
    private var buffer: [UInt8] = []
    private var scanned = 0

    public init(maxHeadBytes: Int = defaultMaxHeadBytes) {
        self.maxHeadBytes = maxHeadBytes
    }

    /// Feeds bytes; nil while the head is incomplete. On success, also the bytes that followed the head (the start
    /// of a body).
    public mutating func feed(_ bytes: some Collection<UInt8>) throws(HTTPHeadError)
        -> (head: HTTPRequestHead, rest: [UInt8])?
    {
        buffer.append(contentsOf: bytes)
        // The end of the head: CRLF CRLF (a bare LF LF is accepted, as RFC 9112 section 2.2 allows).
        var end: Int?
        var i = max(0, scanned - 3)
        while i < buffer.count {
            if buffer[i] == 0x0A {
                if i >= 1 && buffer[i - 1] == 0x0A { end = i + 1; break }
                if i >= 3 && buffer[i - 1] == 0x0D && buffer[i - 2] == 0x0A && buffer[i - 3] == 0x0D {
                    end = i + 1
                    break
                }
            }
            i += 1
        }
        scanned = buffer.count
        guard let end else {
            if buffer.count > maxHeadBytes { throw .headTooLarge }
            return nil
        }
        guard end <= maxHeadBytes else { throw .headTooLarge }
        let head = try Self.parse(buffer[0..<end])
        return (head, Array(buffer[end...]))
    }

    static func parse(_ bytes: ArraySlice<UInt8>) throws(HTTPHeadError) -> HTTPRequestHead {
        var lines = bytes.split(separator: 0x0A, omittingEmptySubsequences: false).map { line in
            line.last == 0x0D ? line.dropLast() : line
        }
        while lines.last?.isEmpty == true { lines.removeLast() }
        // A server should ignore empty lines before the request line (RFC 9112 section 2.2).
        while lines.first?.isEmpty == true { lines.removeFirst() }
        guard let requestLine = lines.first else { throw .badRequest("empty request") }
        let parts = requestLine.split(separator: 0x20, omittingEmptySubsequences: false)
        guard parts.count == 3, !parts[0].isEmpty, !parts[1].isEmpty else {
            throw .badRequest("the request line is not METHOD TARGET VERSION")
        }
        guard parts[0].allSatisfy(isTokenByte) else { throw .badRequest("bad method") }
        guard parts[1].allSatisfy({ $0 > 0x20 && $0 < 0x7F }) else { throw .badRequest("bad request target") }
        let version = String(decoding: parts[2], as: UTF8.self)
        guard version.hasPrefix("HTTP/") else { throw .badRequest("bad version") }
        guard version == "HTTP/1.1" || version == "HTTP/1.0" else { throw .versionNotSupported }
        let target = String(decoding: parts[1], as: UTF8.self)
        guard target.hasPrefix("/") else { throw .badRequest("the target is not an absolute path") }
        let pathAndQuery = target.split(separator: "?", maxSplits: 1, omittingEmptySubsequences: false)
        var query: [(String, String)] = []
        if pathAndQuery.count == 2 {
            for pair in pathAndQuery[1].split(separator: "&") {
                let kv = pair.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false)
                guard !kv[0].isEmpty else { continue }
                query.append((String(kv[0]), kv.count == 2 ? String(kv[1]) : ""))
            }
        }
        var headers: [(String, String)] = []
        for line in lines.dropFirst() {
            guard let colon = line.firstIndex(of: UInt8(ascii: ":")) else {
                throw .badRequest("a header line without a colon")
            }
            let name = line[line.startIndex..<colon]
            // No whitespace between the name and the colon (RFC 9112 section 5.1), no obsolete line folding.
            guard !name.isEmpty, name.allSatisfy(isTokenByte) else { throw .badRequest("bad header name") }
            let value = line[(colon + 1)...].drop { $0 == 0x20 || $0 == 0x09 }
            let trimmed = value.reversed().drop { $0 == 0x20 || $0 == 0x09 }.reversed()
            guard trimmed.allSatisfy({ $0 >= 0x20 || $0 == 0x09 }), !trimmed.contains(0x7F) else {
                throw .badRequest("bad header value")
            }
            headers.append((String(decoding: name, as: UTF8.self).lowercased(),
                            String(decoding: trimmed, as: UTF8.self)))
        }
        return HTTPRequestHead(method: String(decoding: parts[0], as: UTF8.self), path: String(pathAndQuery[0]),
                               query: query, version: version, headers: headers)
    }

    /// tchar of RFC 9110 section 5.6.2.
    static func isTokenByte(_ b: UInt8) -> Bool {
        switch b {
        case 0x30...0x39, 0x41...0x5A, 0x61...0x7A: return true
        case UInt8(ascii: "!"), UInt8(ascii: "#"), UInt8(ascii: "$"), UInt8(ascii: "%"), UInt8(ascii: "&"),
             UInt8(ascii: "'"), UInt8(ascii: "*"), UInt8(ascii: "+"), UInt8(ascii: "-"), UInt8(ascii: "."),
             UInt8(ascii: "^"), UInt8(ascii: "_"), UInt8(ascii: "`"), UInt8(ascii: "|"), UInt8(ascii: "~"):
            return true
        default: return false
        }
    }
}
