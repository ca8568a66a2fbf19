import Foundation
import LarsProtocol
import LoadBalanceAgent
import LoadBalanceClient
import LoadBalancing
@testable import MediaRelay
import NameService
import Reactor
import RouteTestSupport
import Storage
import Testing
import TestSupport

@Suite("Relay registration settings")
struct RelayRegistrationSettingsTests {
    @Test("a registration is validated: name service HOST:PORT, ttl 0.3...3600 s, an address callers can reach")
    func validation() throws {
        func configuration(_ registration: RelayRegistration, host: String = "127.0.0.1") -> RelayConfiguration {
            RelayConfiguration(host: host, registration: registration)
        }
        try configuration(RelayRegistration()).validate()
        let defaults = RelayRegistration()
        #expect(defaults.modid == 400 && defaults.cmdid == 1 && defaults.ttl == .seconds(10))
        let bad: [(RelayConfiguration, String)] = [
            (configuration(RelayRegistration(nameService: "names")), "name service"),
            (configuration(RelayRegistration(nameService: "127.0.0.1:0")), "name service"),
            (configuration(RelayRegistration(ttl: .milliseconds(100))), "ttl"),
            (configuration(RelayRegistration(ttl: .seconds(7200))), "ttl"),
            (configuration(RelayRegistration(advertise: "0.0.0.0:7800")), "advertise"),
            (configuration(RelayRegistration(advertise: "relay.example:7800")), "advertise"),
            (configuration(RelayRegistration(advertise: "10.0.0.1:0")), "advertise"),
            (configuration(RelayRegistration(), host: "0.0.0.0"), "advertise"),
        ]
        for (c, word) in bad {
            #expect(throws: RelayError.self) { try c.validate() }
            do { try c.validate() } catch { #expect(error.description.contains(word), "\(error)") }
        }
        // Binding every address is fine when the advertised one is given.
        try configuration(RelayRegistration(advertise: "10.0.0.1:7800"), host: "0.0.0.0").validate()
        #expect(RelayRegistration(advertise: "10.0.0.1:7800").advertisedHost(boundPort: 1)
            == Host(address: "10.0.0.1", port: 7800))
        #expect(RelayRegistration().advertisedHost(boundHost: "127.0.0.1", boundPort: 9)
            == Host(address: "127.0.0.1", port: 9))
    }
}

extension RelaySocketTests {
    @Suite("Relays registered with the name service, found by key until full")
    struct RelayRegistrationTests {
        /// A name service on SQLite (port 0) and an agent asking it, on `poller`.
        final class Directory: Sendable {
            let namesGroup: EventLoopGroup
            let names: NameService
            let namesPort: Int
            let namesTask: Task<Void, any Error>
            let agentGroup: EventLoopGroup
            let agent: LoadBalanceAgent
            let client: LoadBalanceClient
            let pool: ConnectionPool

            init(poller: PollerKind) async throws {
                pool = try await makePool(temporarySQLiteURL("relay-names"))
                namesGroup = try EventLoopGroup(ioLoops: 1, configuration: LoopConfiguration(poller: poller))
                names = NameService(group: namesGroup,
                                    configuration: NameServiceConfiguration(port: 0, pollInterval: .milliseconds(200)),
                                    pool: pool, logger: relayTestLogger)
                namesPort = Int(try names.start().port)
                namesTask = Task { [names] in try await names.run() }
                agentGroup = try EventLoopGroup(ioLoops: 2, configuration: LoopConfiguration(poller: poller))
                // No reporter runs: the agent's reports are dropped (it reconnects in the background).
                agent = LoadBalanceAgent(group: agentGroup, configuration: AgentConfiguration(
                    ports: [0, 0, 0], nameServicePort: namesPort, reporterPort: 9,
                    routeRetryInterval: .milliseconds(200),
                    initialBackoff: .milliseconds(50), maxBackoff: .milliseconds(200)), logger: relayTestLogger)
                let ports = try agent.start().map { Int($0.port) }
                client = try LoadBalanceClient(agentPorts: ports, timeout: .seconds(2), loop: agentGroup.ioLoops[1])
            }

            /// GetHost by key for the relays' module, reported as a success (as a caller that then watches does), so
            /// no call stays outstanding.
            func relay(for movie: String) async throws -> LoadBalancing.Host? {
                let result = try await client.getHost(modid: RelayRegistration.defaultModid,
                                                      cmdid: RelayRegistration.defaultCmdid, key: movie)
                if let host = result.host {
                    client.report(modid: RelayRegistration.defaultModid, cmdid: RelayRegistration.defaultCmdid,
                                  host: host, success: true)
                }
                return result.host
            }

            /// True once `count` answers in a row are `host`.
            func keepsGiving(_ host: LoadBalancing.Host, for movie: String, count: Int = 5) async throws -> Bool {
                for _ in 0..<count where try await relay(for: movie) != host { return false }
                return true
            }

            func stop() async {
                client.close()
                await onThread { [agent, agentGroup] in
                    agent.shutdown()
                    agentGroup.shutdown()
                }
                namesTask.cancel()
                _ = await namesTask.result
                await onThread { [namesGroup] in namesGroup.shutdown() }
                await pool.close()
            }
        }

        @Test("GetHost by the movie's name: relay A until A is full, then B; A with room again; A shut down: B",
              arguments: PollerKind.allCases)
        func foundByKeyUntilFull(poller: PollerKind) async throws {
            let movie = try TestMedia.movie(seconds: 30)
            let directory = try await Directory(poller: poller)
            // A long ttl: a relay that drops out before it could only have taken its registration back; fullness is
            // sent at once, never left to the heartbeat.
            let registration = RelayRegistration(nameService: "127.0.0.1:\(directory.namesPort)", ttl: .seconds(20))
            var relays: [RunningRelay] = []
            for _ in 0..<2 {
                relays.append(try await RunningRelay(poller: poller, movies: ["movie": movie]) {
                    $0.capacity = 2
                    $0.registration = registration
                })
            }
            let hostOf = { (relay: RunningRelay) in
                LoadBalancing.Host(address: "127.0.0.1", port: Int(relay.framePort))!
            }
            #expect(await eventually { relays.allSatisfy { $0.relay.statistics.registrationsAccepted >= 1 } })
            #expect(await eventually {
                let route = try? await directory.client.getRoute(modid: RelayRegistration.defaultModid,
                                                                 cmdid: RelayRegistration.defaultCmdid)
                return Set(route ?? []) == Set(relays.map(hostOf))
            }, "both relays are in the route")

            // The movie's relay: the same answer call after call.
            let first = try #require(try await directory.relay(for: "movie"))
            let a = try #require(relays.first { hostOf($0) == first })
            let b = try #require(relays.first { hostOf($0) != first })
            #expect(try await directory.keepsGiving(hostOf(a), for: "movie", count: 10))

            // One viewer of two: still A. Two: A is full, and B gets the movie.
            var viewers: [HTTPViewer] = []
            func watch(_ relay: RunningRelay) throws {
                let viewer = try HTTPViewer(port: relay.httpPort)
                try viewer.request("/live/movie.ts")
                viewers.append(viewer)
            }
            try watch(a)
            #expect(await eventually { a.relay.statistics.viewers == 1 })
            #expect(try await directory.keepsGiving(hostOf(a), for: "movie"))
            try watch(a)
            #expect(await eventually { a.relay.statistics.viewers == 2 })
            #expect(await eventually { (try? await directory.keepsGiving(hostOf(b), for: "movie")) == true },
                    "a full relay drops out of the keyed answers")
            #expect(try await directory.keepsGiving(hostOf(b), for: "movie", count: 10))

            // A viewer leaves A: room again, the movie goes back to A.
            viewers.removeLast().socket.close()
            #expect(await eventually { a.relay.statistics.viewers == 1 })
            #expect(await eventually { (try? await directory.keepsGiving(hostOf(a), for: "movie")) == true })

            // A shuts down: it takes its registration back, and B is the answer (well within A's 20 s ttl).
            let stoppedAt = ContinuousClock.now
            await a.stop()
            #expect(await eventually { (try? await directory.keepsGiving(hostOf(b), for: "movie")) == true })
            #expect(ContinuousClock.now - stoppedAt < .seconds(min(5 * testTimeScale, 15)))
            let route = try await directory.client.getRoute(modid: RelayRegistration.defaultModid,
                                                            cmdid: RelayRegistration.defaultCmdid)
            #expect(route == [hostOf(b)])

            for viewer in viewers { viewer.socket.close() }
            await b.stop()
            await directory.stop()
        }
    }
}
