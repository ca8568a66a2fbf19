import Foundation
import TestSupport
import Testing

@Suite("switchyard resource: add, list, remove")
struct ResourceCLITests {
    @Test("a movie is added with its codecs and length, listed and removed; bad files and names exit 1 with a line")
    func resourceCommands() throws {
        let movie = try TestMedia.movie(seconds: 3, fps: 25, gop: 25)
        defer { try? FileManager.default.removeItem(at: movie) }
        let db = temporarySQLiteURL("resources")
        let added = try runSwitchyard(["resource", "add", "--name", "movie", "--path", movie.path, "--db", db])
        #expect(added.status == 0)
        #expect(added.stdout == "added movie: \(movie.path), h264+mp2, 0:03.000\n")
        let listed = try runSwitchyard(["resource", "list", "--db", db])
        #expect(listed.stdout == "movie\t0:03.000\tvideo/mp2t\t\(movie.path)\n")

        let again = try runSwitchyard(["resource", "add", "--name", "movie", "--path", movie.path, "--db", db])
        #expect(again.status == 1)
        #expect(again.stderr == "Error: a resource named 'movie' exists already\n")
        let notTS = try runSwitchyard(["resource", "add", "--name", "passwd", "--path", "/etc/passwd", "--db", db])
        #expect(notTS.status == 1)
        #expect(notTS.stderr.contains("not an MPEG transport stream"))
        let badName = try runSwitchyard(["resource", "add", "--name", "a/b", "--path", movie.path, "--db", db])
        #expect(badName.status != 0)
        #expect(badName.stderr.contains("bad resource name 'a/b'"))

        #expect(try runSwitchyard(["resource", "remove", "--name", "movie", "--db", db]).status == 0)
        let gone = try runSwitchyard(["resource", "remove", "--name", "movie", "--db", db])
        #expect(gone.status == 1)
        #expect(gone.stderr == "Error: no resource named 'movie'\n")
        #expect(try runSwitchyard(["resource", "list", "--db", db]).stdout == "no resources\n")
    }
}
