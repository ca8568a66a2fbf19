#if canImport(Glibc)
import Glibc
#endif
import Reactor
import Synchronization
import Testing
import TestSupport

@Suite("BroadcastFile and sendFileInLoop (bytes written once, sent by sendfile)")
struct BroadcastFileTests {
    /// The file's bytes at `offset` (pread).
    private func read(_ file: BroadcastFile, offset: Int64, count: Int) -> [UInt8] {
        var out = [UInt8](repeating: 0, count: count)
        let n = out.withUnsafeMutableBytes { pread(file.descriptor, $0.baseAddress, count, off_t(offset)) }
        return Array(out.prefix(max(n, 0)))
    }

    /// Bytes of the file's pages that hold data (st_blocks): what it really costs in memory.
    private func allocatedBytes(_ file: BroadcastFile) -> Int {
        var st = stat()
        guard fstat(file.descriptor, &st) == 0 else { return -1 }
        return Int(st.st_blocks) * 512
    }

    @Test("regions read back; pages are given back only once every region before them is gone, whole pages only")
    func pagesGivenBackInOrder() throws {
        let resident = Atomic<Int64>(0)
        var file: BroadcastFile? = try BroadcastFile(name: "test", punchGranularity: 64 << 10) { delta in
            resident.wrappingAdd(delta, ordering: .relaxed)
        }
        let payloads = (0..<64).map { randomBytes(10_000 + $0 * 13) }
        var regions: [BroadcastFile.Region?] = try payloads.map { bytes in
            try bytes.withUnsafeBytes { raw throws(IOError) in try file!.append(raw) }
        }
        let total = payloads.reduce(0) { $0 + $1.count }
        #expect(file!.bytesAppended == Int64(total) && file!.residentBytes == Int64(total))
        #expect(resident.load(ordering: .relaxed) == Int64(total))
        for (i, region) in regions.enumerated() {
            #expect(read(file!, offset: region!.offset, count: region!.count) == payloads[i])
        }
        // Everything but the first region goes, newest first: nothing can be given back while the first lives.
        for i in stride(from: 63, to: 0, by: -1) { regions[i] = nil }
        #expect(file!.residentBytes == Int64(total))
        // Keep region 40 alive again by a copy made before: the pages before it go, its own bytes stay intact.
        let keptIndex = 40
        let kept = try payloads[keptIndex].withUnsafeBytes { raw throws(IOError) in try file!.append(raw) }
        regions[0] = nil
        let released = Int64(total)  // every region before `kept` is gone
        let expectedPunched = released & ~4095
        #expect(file!.residentBytes == Int64(total + payloads[keptIndex].count) - expectedPunched)
        #expect(resident.load(ordering: .relaxed) == file!.residentBytes)
        #expect(allocatedBytes(file!) <= Int(file!.residentBytes) + 4096, "allocated \(allocatedBytes(file!))")
        #expect(read(file!, offset: kept.offset, count: kept.count) == payloads[keptIndex])
        #expect(read(file!, offset: 0, count: 16) == [UInt8](repeating: 0, count: 16), "a hole reads as zeros")
        // The file closes once its last region and its owner are gone; the gauge returns to zero.
        file = nil
        #expect(resident.load(ordering: .relaxed) > 0)
        _ = consume kept
        #expect(resident.load(ordering: .relaxed) == 0)
    }

    @Test("a small release gives nothing back until the granularity is reached")
    func granularity() throws {
        let file = try BroadcastFile(name: "test", punchGranularity: 256 << 10)
        var regions: [BroadcastFile.Region] = []
        for _ in 0..<100 {
            let bytes = randomBytes(4000)
            regions.append(try bytes.withUnsafeBytes { raw throws(IOError) in try file.append(raw) })
        }
        regions.removeFirst(50)  // 200,000 bytes: under 256 KiB
        #expect(file.residentBytes == 400_000)
        // Released one at a time: the 66th makes 264,000 bytes, whose whole pages (262,144) pass 256 KiB and go at
        // once; the next four add 16 KiB of pages, under the granularity again.
        for _ in 0..<20 { regions.removeFirst() }
        #expect(file.residentBytes == 400_000 - 262_144)
    }

    /// A server that sends, to each connection, the pieces in order: array bytes by a gather write with
    /// `moreFollows` (they frame the file bytes after them), file regions by sendFileInLoop, retrying on a timer
    /// while the socket is full or output is queued. Then it closes.
    private func withSendFileServer<R>(poller: PollerKind, pieces: [Piece], _ body: (UInt16) throws -> R) throws -> R {
        try withGroup(poller: poller, ioLoops: 1) { group in
            let server = TCPServer(
                group: group, configuration: ServerConfiguration(port: 0),
                callbacks: ConnectionCallbacks(onConnect: { connection in
                    let sender = PieceSender(connection: connection, pieces: pieces)
                    sender.step()
                }))
            let port = try server.start().port
            defer { server.shutdown(timeout: .seconds(2)) }
            return try body(port)
        }
    }

    enum Piece: @unchecked Sendable {  // the regions are immutable; sent from one loop
        case bytes([UInt8])
        case region(BroadcastFile.Region)
    }

    final class PieceSender: @unchecked Sendable {  // its connection's loop only
        let connection: TCPConnection
        var pieces: ArraySlice<Piece>
        var sentOfFirst = 0
        var timer: TimerHandle?
        var zeroWhileQueued = 0

        init(connection: TCPConnection, pieces: [Piece]) {
            self.connection = connection
            self.pieces = pieces[...]
        }

        func step() {
            while let first = pieces.first {
                switch first {
                case .bytes(let bytes):
                    var moreFollows = false
                    if case .region? = pieces.dropFirst().first { moreFollows = true }
                    let ok = bytes.withUnsafeBytes { connection.sendInLoop(gathering: [$0], moreFollows: moreFollows) }
                    #expect(ok)
                    pieces.removeFirst()
                case .region(let region):
                    let queued = connection.queuedOutputBytes > 0
                    guard let n = connection.sendFileInLoop(region.file.descriptor,
                                                            offset: region.offset + Int64(sentOfFirst),
                                                            count: region.count - sentOfFirst)
                    else {
                        Issue.record("the connection closed")
                        return
                    }
                    if queued {
                        #expect(n == 0, "sendfile went before queued output")
                        zeroWhileQueued += 1
                    }
                    sentOfFirst += n
                    if sentOfFirst == region.count {
                        pieces.removeFirst()
                        sentOfFirst = 0
                        continue
                    }
                    if timer == nil {
                        timer = connection.loop.scheduleRepeating(every: .milliseconds(2)) { [self] in step() }
                    }
                    return
                }
            }
            timer?.cancel()
            timer = nil
            connection.close()
        }
    }

    @Test("framing bytes and file regions arrive whole and in order past a full socket", arguments: PollerKind.allCases)
    func sendFileInOrder(poller: PollerKind) throws {
        let file = try BroadcastFile(name: "test")
        var pieces: [Piece] = []
        var expected: [UInt8] = []
        // 6 MB: more than the socket buffers hold, so sends stop part way and resume; framing of 0-300 bytes before
        // each region, some of it queued behind a full socket.
        for i in 0..<300 {
            let framing = randomBytes((i * 37) % 300)
            let payload = randomBytes(1 + (i * 7919) % 40_000)
            if !framing.isEmpty { pieces.append(.bytes(framing)) }
            pieces.append(.region(try payload.withUnsafeBytes { raw throws(IOError) in try file.append(raw) }))
            expected += framing + payload
        }
        try withSendFileServer(poller: poller, pieces: pieces) { port in
            let client = try BlockingSocket(port: port, receiveTimeout: 20)
            defer { client.close() }
            let received = try client.receiveUntilClose()
            #expect(received.count == expected.count)
            #expect(received == expected)
        }
    }

    @Test("sendFileInLoop on a closed connection is nil; nothing is sent for a count of zero")
    func closedConnection() throws {
        let file = try BroadcastFile(name: "test")
        let region = try randomBytes(1000).withUnsafeBytes { raw throws(IOError) in try file.append(raw) }
        let results = Mutex<[Int?]>([])
        try withGroup(poller: .epoll, ioLoops: 1) { group in
            let server = TCPServer(
                group: group, configuration: ServerConfiguration(port: 0),
                callbacks: ConnectionCallbacks(onConnect: { connection in
                    let zero = connection.sendFileInLoop(file.descriptor, offset: region.offset, count: 0)
                    connection.forceClose()
                    let closed = connection.sendFileInLoop(file.descriptor, offset: region.offset, count: region.count)
                    results.withLock { $0 = [zero, closed] }
                }))
            let port = try server.start().port
            defer { server.shutdown(timeout: .seconds(2)) }
            let client = try BlockingSocket(port: port, receiveTimeout: 10)
            defer { client.close() }
            #expect((try? client.receiveUntilClose())?.isEmpty ?? true)
            #expect(eventually { results.withLock { $0.count == 2 } })
        }
        #expect(results.withLock { $0 } == [0, nil])
    }
}
