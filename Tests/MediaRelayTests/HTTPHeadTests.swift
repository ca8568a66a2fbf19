import MediaRelay
import Testing

@Suite("HTTP request heads: bounded, drip-fed, refused with the status to answer")
struct HTTPHeadTests {
    let request = Array(
        "GET /vod/movie.ts?start=12.5&x HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nUser-Agent:  ffmpeg \r\n\r\nBODY".utf8)

    @Test("a player's GET: method, path, query, version, headers, and the bytes after the head")
    func get() throws {
        var parser = HTTPHeadParser()
        let (head, rest) = try #require(try parser.feed(request))
        #expect(head.method == "GET")
        #expect(head.path == "/vod/movie.ts")
        #expect(head.queryValue("start") == "12.5")
        #expect(head.queryValue("x") == "")
        #expect(head.version == "HTTP/1.1")
        #expect(head.header("host") == "127.0.0.1:8080")
        #expect(head.header("User-Agent") == "ffmpeg")
        #expect(rest == Array("BODY".utf8))
    }

    @Test("fed one byte at a time: nothing until the empty line, then the same head")
    func dripFeed() throws {
        var whole = HTTPHeadParser()
        let expected = try #require(try whole.feed(request)).head
        var parser = HTTPHeadParser()
        let headEnd = request.count - 4
        for (i, byte) in request.enumerated() {
            let result = try parser.feed([byte])
            if i < headEnd - 1 {
                #expect(result == nil)
            } else if let result {
                #expect(result.head == expected)
                return
            }
        }
        Issue.record("no head after the whole request")
    }

    @Test("a head longer than 8 KiB is 431, even without its end; a 1.2 or garbage version 505 or 400")
    func refusals() {
        var long = HTTPHeadParser()
        #expect(throws: HTTPHeadError.headTooLarge) {
            _ = try long.feed(Array("GET / HTTP/1.1\r\nX: ".utf8) + [UInt8](repeating: 0x61, count: 9000))
        }
        let cases: [(String, HTTPHeadError)] = [
            ("GET / HTTP/1.2\r\n\r\n", .versionNotSupported),
            ("GET / FTP/1.0\r\n\r\n", .badRequest("bad version")),
            ("GET /\r\n\r\n", .badRequest("the request line is not METHOD TARGET VERSION")),
            ("GET  / HTTP/1.1\r\n\r\n", .badRequest("the request line is not METHOD TARGET VERSION")),
            ("G(T / HTTP/1.1\r\n\r\n", .badRequest("bad method")),
            ("GET movie HTTP/1.1\r\n\r\n", .badRequest("the target is not an absolute path")),
            ("GET / HTTP/1.1\r\nNo colon here\r\n\r\n", .badRequest("a header line without a colon")),
            ("GET / HTTP/1.1\r\nHost : x\r\n\r\n", .badRequest("bad header name")),
            ("GET / HTTP/1.1\r\nX: a\u{1}b\r\n\r\n", .badRequest("bad header value")),
        ]
        for (text, error) in cases {
            var parser = HTTPHeadParser()
            #expect(throws: error, "\(text.debugDescription)") { _ = try parser.feed(Array(text.utf8)) }
        }
    }

    @Test("random bytes never crash the parser; it answers, refuses or waits within its bound")
    func randomBytes() {
        var generator = SystemRandomNumberGenerator()
        let alphabet = Array("GET /?&=:\r\n HTTP/1.1 aZ\t".utf8) + [0, 0x7F, 0xFF]
        for _ in 0..<2000 {
            var parser = HTTPHeadParser(maxHeadBytes: 256)
            var fed = 0
            loop: for _ in 0..<20 {
                let piece = (0..<Int.random(in: 0..<40, using: &generator)).map { _ in
                    alphabet.randomElement(using: &generator)!
                }
                fed += piece.count
                do {
                    if try parser.feed(piece) != nil { break loop }
                    #expect(fed <= 256)
                } catch {
                    break loop
                }
            }
        }
    }
}
