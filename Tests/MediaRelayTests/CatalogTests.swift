import Foundation
import Logging
import MediaRelay
import Storage
import TestSupport
import Testing

@Suite("Resource catalog and media probe")
struct CatalogTests {
    @Test("add, find, list and remove resources; names checked; a taken name refused", arguments: TestDatabase.all)
    func catalog(db: TestDatabase) async throws {
        let pool = try ConnectionPool(url: try db.url(), configuration: PoolConfiguration(maxConnections: 1),
                                      logger: Logger(label: "test", factory: { _ in SwiftLogNoOpLogHandler() }))
        try await ResourceCatalog.create(on: pool)
        try await ResourceCatalog.create(on: pool)  // idempotent
        let unique = "movie-\(UInt32.random(in: 0...UInt32.max))"
        let added = try await ResourceCatalog.add(name: unique, path: "/srv/\(unique).ts", durationMilliseconds: 4000,
                                                  added: 1_790_000_000, on: pool)
        #expect(added.name == unique)
        #expect(added.mediaType == "video/mp2t")
        let found = try await ResourceCatalog.find(name: unique, on: pool)
        #expect(found == added)
        #expect(try await ResourceCatalog.list(on: pool).contains(added))
        await #expect(throws: ResourceCatalogError.duplicateName(unique)) {
            try await ResourceCatalog.add(name: unique, path: "/other.ts", durationMilliseconds: 1, added: 0, on: pool)
        }
        for bad in ["", "a b", "../etc", ".hidden", "a/b", String(repeating: "x", count: 129), "caf\u{E9}"] {
            await #expect(throws: ResourceCatalogError.badName(bad)) {
                try await ResourceCatalog.add(name: bad, path: "/x.ts", durationMilliseconds: 1, added: 0, on: pool)
            }
        }
        #expect(try await ResourceCatalog.remove(name: unique, on: pool))
        #expect(try await ResourceCatalog.remove(name: unique, on: pool) == false)
        #expect(try await ResourceCatalog.find(name: unique, on: pool) == nil)
        await pool.close()
    }

    @Test("a probe reads an ffmpeg movie's codecs and length from its two ends")
    func probeMovie() throws {
        let movie = try TestMedia.movie(seconds: 12, fps: 25, gop: 25)
        defer { try? FileManager.default.removeItem(at: movie) }
        let whole = try MediaProbe.probe(path: movie.path)
        #expect(whole.program.streams.map(\.kind.codecName) == ["h264", "mp2"])
        #expect(whole.durationMilliseconds == 12_000)
        // A window smaller than the file: the length comes from the head and the tail.
        #expect(whole.size > 4 * 64 << 10)
        let ends = try MediaProbe.probe(path: movie.path, window: 64 << 10)
        #expect(ends.durationMilliseconds == 12_000)
    }

    @Test("a probe refuses a missing file, a text file and a file of packets without a clock, with the reason")
    func probeRefusals() throws {
        #expect(throws: MediaProbeError.cannotRead(path: "/nonexistent/x.ts", errno: ENOENT)) {
            try MediaProbe.probe(path: "/nonexistent/x.ts")
        }
        let text = temporaryFile("text", ".ts")
        try Data(String(repeating: "hello ", count: 10_000).utf8).write(to: text)
        defer { try? FileManager.default.removeItem(at: text) }
        #expect(throws: MediaProbeError.unusable(path: text.path, .notTransportStream)) {
            try MediaProbe.probe(path: text.path)
        }
        let bare = temporaryFile("bare", ".ts")
        var packets: [UInt8] = []
        for i in 0..<100 { packets += [0x47, 0x01, 0x00, 0x10 | UInt8(i & 15)] + [UInt8](repeating: 0, count: 184) }
        try Data(packets).write(to: bare)
        defer { try? FileManager.default.removeItem(at: bare) }
        #expect(throws: MediaProbeError.unusable(path: bare.path, .noClock("no program map table (PAT/PMT)"))) {
            try MediaProbe.probe(path: bare.path)
        }
        let error = MediaProbeError.unusable(path: text.path, .notTransportStream)
        #expect(error.description.contains("not an MPEG transport stream"))
    }
}
