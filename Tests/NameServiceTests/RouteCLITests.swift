import Foundation
import Storage
import RouteTestSupport
import Testing
import TestSupport

extension NameServiceSocketTests {
    @Suite("switchyard route")
    struct RouteCLITests {
        @Test("route add edits RouteData, bumps RouteVersion and records a RouteChange; list and remove")
        func addListRemove() async throws {
            let file = temporaryFile("cli")
            let db = "sqlite:" + file.path
            let add = try await runSwitchyard(["route", "add", "--modid", "7", "--cmdid", "1", "--ip", "127.0.0.1",
                                               "--port", "9000", "--db", db])
            #expect(add.status == 0, "stderr: \(add.stderr)")
            #expect(add.stdout.contains("added 127.0.0.1:9000 to route 7/1"))

            let pool = try ConnectionPool(url: db, configuration: PoolConfiguration(minConnections: 0), logger: quietLogger)
            let rows = try await pool.query("SELECT modid, cmdid, serverip, serverport FROM RouteData").rows
            #expect(rows.count == 1)
            #expect(try rows.first?.decode("serverip", as: Int64.self) == 2_130_706_433)
            #expect(try rows.first?.decode("serverport", as: Int.self) == 9000)
            #expect(try await pool.queryFirst("SELECT version FROM RouteVersion WHERE id = 1")?.decode(0, as: Int.self) == 1)
            let changes = try await pool.query("SELECT modid, cmdid, version FROM RouteChange").rows
            #expect(changes.count == 1)
            #expect(try changes.first?.decode("modid", as: Int.self) == 7)
            #expect(try changes.first?.decode("version", as: Int.self) == 1)

            let list = try await runSwitchyard(["route", "list", "--modid", "7", "--db", db])
            #expect(list.status == 0)
            #expect(list.stdout.contains("127.0.0.1:9000"))

            let remove = try await runSwitchyard(["route", "remove", "--modid", "7", "--cmdid", "1", "--ip",
                                                  "127.0.0.1", "--port", "9000", "--db", db])
            #expect(remove.status == 0)
            #expect(try await pool.queryFirst("SELECT COUNT(*) FROM RouteData")?.decode(0, as: Int.self) == 0)
            #expect(try await pool.queryFirst("SELECT version FROM RouteVersion")?.decode(0, as: Int.self) == 2)
            #expect(try await pool.queryFirst("SELECT COUNT(*) FROM RouteChange")?.decode(0, as: Int.self) == 2)
            await pool.close()
        }

        @Test("bad input: a clear message and a non-zero exit", arguments: [
            (["--ip", "300.1.1.1", "--port", "80"], "--ip"),
            (["--ip", "10.0.0.1", "--port", "70000"], "--port"),
        ])
        func badInput(arguments: [String], mentions: String) async throws {
            let db = "sqlite:" + temporaryFile("bad").path
            let out = try await runSwitchyard(["route", "add", "--modid", "1", "--cmdid", "1"] + arguments + ["--db", db])
            #expect(out.status != 0)
            #expect(out.stderr.contains(mentions))
        }

        @Test("an unreachable database: a clear message and a non-zero exit")
        func unreachableDatabase() async throws {
            let out = try await runSwitchyard(["route", "list", "--db", "sqlite:/nonexistent-dir/x.sqlite"])
            #expect(out.status != 0)
            #expect(out.stderr.contains("cannot use the database"))
        }
    }
}
