import Foundation
import LarsProtocol
import LoadBalancing
import Messaging
import NameService
import Reactor
import RouteStore
import Storage
import RouteTestSupport
import Testing
import TestSupport

extension NameServiceSocketTests {
    @Suite("Starting and stopping: taken ports, signals")
    struct LifecycleTests {
        @Test("a port already taken: start() and run() throw, nothing is left listening")
        func portTaken() async throws {
            let pool = try await makePool(TestDatabase.sqliteFile.url())
            let listener = try boundLoopbackSocket(listenBacklog: 8)
            defer { close(listener.fd) }
            let group = try EventLoopGroup(ioLoops: 1)
            let configuration = NameServiceConfiguration(port: Int(listener.port))
            let names = NameService(group: group, configuration: configuration, pool: pool, logger: quietLogger)
            #expect(throws: (any Error).self) { try names.start() }
            let other = NameService(group: group, configuration: configuration, pool: pool, logger: quietLogger)
            await #expect(throws: (any Error).self) {
                try await withTimeout(10, "run() on a taken port") { try await other.run() }
            }
            #expect(names.localAddress == nil && other.localAddress == nil)
            await onThread { group.shutdown() }
            await pool.close()
        }

        @Test("a configuration out of range: start() throws naming the setting, the CLI refuses it")
        func invalidConfiguration() async throws {
            #expect(throws: NameServiceError.self) { try NameServiceConfiguration(pollInterval: .zero).validate() }
            #expect(throws: NameServiceError.self) { try NameServiceConfiguration(port: -1).validate() }
            #expect(throws: NameServiceError.self) { try NameServiceConfiguration(maxConnections: 0).validate() }
            #expect(throws: Never.self) { try NameServiceConfiguration().validate() }
            let pool = try await makePool(TestDatabase.sqliteFile.url())
            let group = try EventLoopGroup(ioLoops: 1)
            let names = NameService(group: group, configuration: NameServiceConfiguration(port: 0, maxRegistrations: -1),
                                    pool: pool, logger: quietLogger)
            do {
                try names.start()
                Issue.record("start() accepted maxRegistrations -1")
            } catch {
                #expect("\(error)".contains("maxRegistrations"))
            }
            await onThread { group.shutdown() }
            await pool.close()
        }

        @Test("`switchyard names|reporter` on a port already taken exits 1 with one line naming the address",
              arguments: ["names", "reporter"])
        func commandOnTakenPort(command: String) async throws {
            let listener = try boundLoopbackSocket(listenBacklog: 1)
            defer { close(listener.fd) }
            let port = Int(listener.port)
            let db = "sqlite:" + temporaryFile("taken").path
            let out = try await runSwitchyard([command, "--port", "\(port)", "--db", db], timeout: .seconds(30))
            #expect(out.status == 1)
            #expect(out.stdout.isEmpty, "nothing announced: \(out.stdout)")
            let errors = out.stderr.split(separator: "\n").filter { $0.hasPrefix("Error:") }
            #expect(errors.count == 1, "stderr: \(out.stderr)")
            #expect(errors.first?.contains("\(command): cannot listen on 127.0.0.1:\(port)") == true,
                    "stderr: \(out.stderr)")
        }

        @Test("`switchyard names` refuses bad state relay limits with one line naming the flag",
              arguments: [["--state-max-payload-kib", "0"], ["--state-max-payload-kib", "2048"],
                          ["--state-retention", "0"], ["--state-pending-kib", "32"],
                          ["--state-subscriber-queue-kib", "5000000"]])
        func badStateRelayLimits(flag: [String]) async throws {
            let db = "sqlite:" + temporaryFile("state-flags").path
            let out = try await runSwitchyard(["names", "--port", "0", "--db", db] + flag, timeout: .seconds(30))
            #expect(out.status != 0)
            #expect(out.stdout.isEmpty, "nothing announced: \(out.stdout)")
            let errors = out.stderr.split(separator: "\n").filter { $0.hasPrefix("Error:") }
            #expect(errors.count == 1 && errors[0].contains(flag[0]), "stderr: \(out.stderr)")
        }

        @Test("`switchyard reporter`: writes what agents report; SIGTERM stops it gracefully with exit 0")
        func reporterStopsOnSigterm() async throws {
            let db = "sqlite:" + temporaryFile("reporter-term").path
            let child = try await ChildService.start(["reporter", "--port", "0", "--db", db])
            #expect(child.firstLine.hasPrefix("reporter listening on 127.0.0.1:"), "\(child.firstLine)")
            let group = try EventLoopGroup(ioLoops: 1)
            let client = try await AsyncFrameClient.connect(port: Int(child.port), loop: group.next())
            var result = Lars_HostCallResult()
            result.ip = Int32(bitPattern: LoadBalancing.Host(address: "10.2.0.1", port: 1)!.ip)
            result.port = 80
            result.succ = 3
            var request = Lars_ReportStatusRequest()
            request.modid = 77
            request.cmdid = 1
            request.results = [result]
            request.ts = 5
            try await client.send(request, id: MessageID.reportStatusRequest)
            let pool = try ConnectionPool(url: db, configuration: PoolConfiguration(minConnections: 0), logger: quietLogger)
            #expect(try await eventually {
                try await pool.queryFirst("SELECT succ_cnt FROM ServerCallStatus WHERE modid = 77")?
                    .decode(0, as: Int.self) == 3
            })
            await pool.close()
            let (status, stderr) = await child.terminate(within: .seconds(15))
            #expect(status == 0, "stderr: \(stderr)")
            #expect(stderr.contains("reporter totals") && stderr.contains("received=1"), "stderr: \(stderr)")
            await client.close()
            await onThread { group.shutdown() }
        }

        @Test("`switchyard names`: answers, then SIGTERM right away stops it gracefully with exit 0")
        func namesStopsOnSigterm() async throws {
            let db = "sqlite:" + temporaryFile("names-term").path
            let add = try await runSwitchyard(["route", "add", "--modid", "8", "--cmdid", "1", "--ip", "10.3.0.1",
                                               "--port", "9000", "--db", db])
            #expect(add.status == 0, "stderr: \(add.stderr)")
            let child = try await ChildService.start(["names", "--port", "0", "--db", db, "--poll-interval", "0.1"])
            #expect(child.firstLine.hasPrefix("names listening on 127.0.0.1:"), "\(child.firstLine)")
            let group = try EventLoopGroup(ioLoops: 1)
            let client = try await AsyncFrameClient.connect(port: Int(child.port), loop: group.next())
            let key = RouteKey(modid: 8, cmdid: 1)
            // The first load may come after the first answer: ask until the route is there (pushes count too).
            let found = try await eventually {
                try await askRoute(client, key)
                return try await nextFrame(client, timeout: .milliseconds(500)) { try !routeHosts($0).isEmpty } != nil
            }
            #expect(found)
            let (status, stderr) = await child.terminate(within: .seconds(15))
            #expect(status == 0, "stderr: \(stderr)")
            await client.close()
            await onThread { group.shutdown() }
        }
    }
}
