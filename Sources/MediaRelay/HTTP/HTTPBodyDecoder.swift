/// The body of a request, fed in pieces of any size: a `Content-Length` body, a chunked one (RFC 9112 section 7.1;
/// what ffmpeg sends when it publishes over HTTP), or one that lasts until the connection closes. Gives the body's
/// bytes as they come; chunk extensions and trailers are read and dropped, and chunk-size lines are bounded.
public struct HTTPBodyDecoder: Sendable {
    public enum Framing: Sendable, Equatable {
        case length(Int)
        case chunked
        /// Until the peer closes (HTTP/1.0 style).
        case untilClose
    }

    public enum DecodeError: Error, Sendable, Equatable, CustomStringConvertible {
        case badChunkSize
        case badChunkEnd

        public var description: String {
            switch self {
            case .badChunkSize: return "a chunk size line is not hexadecimal, or too long"
            case .badChunkEnd: return "a chunk does not end with CRLF"
            }
        }
    }

    private enum State: Sendable, Equatable {
        case sizeLine
        case data(remaining: Int)
        case dataEnd(seen: Int)
        case trailer
        case done
    }

    public let framing: Framing
    private var state: State
    private var line: [UInt8] = []
    /// Longest chunk-size line (size, extensions) taken.
    static let maxLine = 1024

    /// The framing of a request's body from its head: chunked, else Content-Length, else until the peer closes.
    /// Nil when the head's framing is invalid (a bad length, or a transfer coding other than chunked).
    public init?(head: HTTPRequestHead) {
        if let coding = head.header("transfer-encoding") {
            guard coding.lowercased() == "chunked" else { return nil }
            self.init(framing: .chunked)
        } else if let length = head.header("content-length") {
            guard let n = Int(length), n >= 0 else { return nil }
            self.init(framing: .length(n))
        } else {
            self.init(framing: .untilClose)
        }
    }

    public init(framing: Framing) {
        self.framing = framing
        switch framing {
        case .length(let n):
            state = n == 0 ? .done : .data(remaining: n)
        case .chunked:
            state = .sizeLine
        case .untilClose:
            state = .data(remaining: .max)
        }
    }

    /// The body is complete (a length body read whole, or a chunked body's last chunk and trailer).
    public var isComplete: Bool { state == .done }

    /// Feeds bytes; returns the body bytes among them. Bytes after a complete body are ignored.
    public mutating func feed(_ bytes: some Collection<UInt8>) throws(DecodeError) -> [UInt8] {
        var out: [UInt8] = []
        var i = bytes.startIndex
        while i != bytes.endIndex {
            switch state {
            case .done:
                return out
            case .data(let left):
                let available = bytes.distance(from: i, to: bytes.endIndex)
                let take = min(left, available)
                let end = bytes.index(i, offsetBy: take)
                out.append(contentsOf: bytes[i..<end])
                i = end
                if left != .max {
                    let rest = left - take
                    if rest > 0 {
                        state = .data(remaining: rest)
                    } else {
                        state = framing == .chunked ? .dataEnd(seen: 0) : .done
                    }
                }
            case .dataEnd(let seen):
                let expected: UInt8 = seen == 0 ? 0x0D : 0x0A
                guard bytes[i] == expected else { throw .badChunkEnd }
                i = bytes.index(after: i)
                state = seen == 0 ? .dataEnd(seen: 1) : .sizeLine
            case .sizeLine, .trailer:
                let b = bytes[i]
                i = bytes.index(after: i)
                if b != 0x0A {
                    line.append(b)
                    guard line.count <= Self.maxLine else { throw .badChunkSize }
                    continue
                }
                if line.last == 0x0D { line.removeLast() }
                defer { line.removeAll(keepingCapacity: true) }
                if state == .trailer {
                    if line.isEmpty { state = .done }
                    continue
                }
                let sizeText = line.prefix { $0 != UInt8(ascii: ";") }
                guard !sizeText.isEmpty, sizeText.count <= 15,
                      let size = Int(String(decoding: sizeText, as: UTF8.self).trimmingSpaces, radix: 16),
                      size >= 0 else { throw .badChunkSize }
                state = size == 0 ? .trailer : .data(remaining: size)
            }
        }
        return out
    }
}

private extension String {
    var trimmingSpaces: String {
        var s = Substring(self)
        while s.first == " " || s.first == "\t" { s.removeFirst() }
        while s.last == " " || s.last == "\t" { s.removeLast() }
        return String(s)
    }
}
