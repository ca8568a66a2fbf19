import LarsProtocol
import LoadBalanceClient
import LoadBalancing
import NameService
import Reactor
import RouteStore
import Storage
import RouteTestSupport
import Synchronization
import Testing
import TestSupport

/// What a subscriber received, in order.
final class ReceivedChanges: Sendable {
    private let changes = Mutex<[StateChange]>([])
    func append(_ change: StateChange) { changes.withLock { $0.append(change) } }
    var all: [StateChange] { changes.withLock { $0 } }
    var payloads: [String] { all.map { String(decoding: $0.payload, as: UTF8.self) } }
}

extension NameServiceSocketTests {
    @Suite("State relay (ids 111-114): a server's change reaches every server of its module")
    struct StateRelayTests {
        @Test("through one replica, received through the other in order; after a failover what was missed, once each",
              arguments: TestDatabase.fileAndServers)
        func acrossReplicasAndFailover(db: TestDatabase) async throws {
            let url = try db.url()
            let firstPool = try await makePool(url), secondPool = try await makePool(url)
            let first = try await RunningNameService(pool: firstPool)
            let second = try await RunningNameService(pool: secondPool)
            let modid = uniqueModid()
            let group = try EventLoopGroup(ioLoops: 1)
            let received = ReceivedChanges()
            let subscriber = try ServiceRegistration(
                loop: group.next(), nameServicePort: second.port,
                alternates: [ClientEndpoint(host: "127.0.0.1", port: first.port)], modid: modid, cmdid: 1,
                host: LoadBalancing.Host(address: "10.4.0.1", port: 9000)!, ttl: .seconds(2),
                onStateChange: { received.append($0) })
            let publisher = try ServiceRegistration(
                loop: group.next(), nameServicePort: first.port, modid: modid, cmdid: 1,
                host: LoadBalancing.Host(address: "10.4.0.2", port: 9000)!, ttl: .seconds(2))
            subscriber.start()
            publisher.start()
            #expect(await eventually { subscriber.acceptedCount >= 1 && publisher.acceptedCount >= 1 })
            // The subscription is in (sent right behind the registration); the relays know where "now" is.
            #expect(await eventually {
                first.service.statistics.stateRelayReady && second.service.statistics.stateRelayReady
            })

            for n in 1...10 { #expect(publisher.publish(Array("\(n)".utf8))) }
            #expect(await eventually { received.all.count == 10 })
            #expect(received.payloads == (1...10).map(String.init))

            // The subscriber's name service goes; changes published meanwhile are caught up at the other one.
            await second.stop()
            for n in 11...20 { #expect(publisher.publish(Array("\(n)".utf8))) }
            #expect(await eventually(timeout: .seconds(15)) { received.all.count >= 20 })
            #expect(received.payloads == (1...20).map(String.init))
            let ids = received.all.map(\.id)
            #expect(zip(ids, ids.dropFirst()).allSatisfy { $0 < $1 }, "ids increase: \(ids)")
            #expect(publisher.publishedCount == 20)
            #expect(first.service.statistics.stateChangesDelivered >= 10, "11...20 came through the other replica")

            subscriber.stop()
            publisher.stop()
            await onThread { group.shutdown() }
            await first.stop()
            await firstPool.close()
            await secondPool.close()
        }

        @Test("two replicas publishing at once: every subscriber gets every change once, in order per publisher",
              arguments: TestDatabase.fileAndServers)
        func twoWritersAtOnce(db: TestDatabase) async throws {
            let url = try db.url()
            let firstPool = try await makePool(url), secondPool = try await makePool(url)
            let thirdPool = try await makePool(url)
            // A loaded database: each insert waits 0-30 ms between taking its id and committing (a trigger), so two
            // writers often commit ids out of order.
            try await SlowCommitTrigger.install(on: firstPool)
            do {
                try await publishFromBothReplicas(firstPool, secondPool, thirdPool)
            } catch {
                try await SlowCommitTrigger.remove(from: firstPool)
                throw error
            }
            try await SlowCommitTrigger.remove(from: firstPool)
            await firstPool.close()
            await secondPool.close()
            await thirdPool.close()
        }

        private func publishFromBothReplicas(_ firstPool: ConnectionPool, _ secondPool: ConnectionPool,
                                             _ thirdPool: ConnectionPool) async throws {
            // Two writers, and a third replica that only reads (often: it is the likeliest to read between them).
            let replicas = [try await RunningNameService(pool: firstPool, pollInterval: .milliseconds(20)),
                            try await RunningNameService(pool: secondPool, pollInterval: .milliseconds(20)),
                            try await RunningNameService(pool: thirdPool, pollInterval: .milliseconds(2))]
            let modid = uniqueModid()
            let group = try EventLoopGroup(ioLoops: 2)
            // A subscriber and a publisher on each replica.
            let received = [ReceivedChanges(), ReceivedChanges(), ReceivedChanges()]
            var subscribers: [ServiceRegistration] = []
            var publishers: [ServiceRegistration] = []
            for (n, replica) in replicas.enumerated() {
                let inbox = received[n]
                subscribers.append(try ServiceRegistration(
                    loop: group.next(), nameServicePort: replica.port, modid: modid, cmdid: 1,
                    host: LoadBalancing.Host(address: "10.4.1.\(n + 1)", port: 9000)!, ttl: .seconds(5),
                    onStateChange: { inbox.append($0) }))
                if n == 2 { continue }
                publishers.append(try ServiceRegistration(
                    loop: group.next(), nameServicePort: replica.port, modid: modid, cmdid: 1,
                    host: LoadBalancing.Host(address: "10.4.1.\(n + 11)", port: 9000)!, ttl: .seconds(5)))
            }
            for registration in subscribers + publishers { registration.start() }
            #expect(await eventually { (subscribers + publishers).allSatisfy { $0.acceptedCount >= 1 } })
            #expect(await eventually { replicas.allSatisfy { $0.service.statistics.stateRelayReady } })

            // Both replicas insert at once, in bursts (each burst a batch of its writer), for many rounds.
            let perPublisher = 100
            for round in 0..<(perPublisher / 5) {
                for n in 0..<5 {
                    for (p, publisher) in publishers.enumerated() {
                        #expect(publisher.publish(Array("p\(p)-\(round * 5 + n)".utf8)))
                    }
                }
                try await Task.sleep(for: .milliseconds(15))
            }
            let total = 2 * perPublisher
            #expect(await eventually(timeout: .seconds(30)) {
                publishers.allSatisfy { $0.publishedCount == perPublisher }
            })
            // Every change reaches both subscribers: wait until nothing more arrives for a while.
            _ = await eventually(timeout: .seconds(20)) { received.allSatisfy { $0.all.count >= total } }
            try await Task.sleep(for: .milliseconds(500))
            for (n, inbox) in received.enumerated() {
                let payloads = inbox.payloads
                #expect(payloads.count == total, "subscriber \(n) got \(payloads.count) of \(total) changes")
                #expect(Set(inbox.all.map(\.id)).count == payloads.count, "subscriber \(n) got an id twice")
                for p in 0..<2 {
                    let mine = payloads.filter { $0.hasPrefix("p\(p)-") }
                    let expected = (0..<perPublisher).map { "p\(p)-\($0)" }
                    let missing = expected.filter { !mine.contains($0) }
                    #expect(mine.elementsEqual(expected),
                            "subscriber \(n): publisher \(p)'s changes in order; missing \(missing)")
                }
            }

            for registration in subscribers + publishers { registration.stop() }
            await onThread { group.shutdown() }
            for replica in replicas { await replica.stop() }
        }

        @Test("publishes waiting for the database stop at 16 MiB: the rest refused and counted, a log line an episode")
        func pendingBytesBound() async throws {
            let url = try TestDatabase.sqliteFile.url()
            let pool = try await makePool(url)
            let recorder = LogRecorder()
            let running = try await RunningNameService(pool: pool, logger: recorder.logger)
            let group = try EventLoopGroup(ioLoops: 1)
            let publisher = try ServiceRegistration(
                loop: group.next(), nameServicePort: running.port, modid: uniqueModid(), cmdid: 1,
                host: LoadBalancing.Host(address: "10.4.0.9", port: 9000)!, ttl: .seconds(5))
            publisher.start()
            #expect(await eventually { publisher.acceptedCount >= 1 && running.service.statistics.stateRelayReady })
            // Another writer holds the database's write lock: the relay's inserts wait (and time out, and retry).
            let blocker = try await makePool(url)
            let payload = [UInt8](repeating: 0x5A, count: 64 * 1024)
            let fit = (16 << 20) / payload.count  // 256 payloads of 64 KiB wait; the rest are refused
            var refusedBefore = 0
            for episode in 1...2 {
                let lock = try await blocker.acquire()
                _ = try await lock.query("BEGIN IMMEDIATE", [])
                for _ in 0..<(fit + 40) { #expect(publisher.publish(payload)) }
                #expect(await eventually(timeout: .seconds(20)) {
                    running.service.statistics.stateChangesRefused == refusedBefore + 40
                })
                #expect(recorder.count(containing: "publishes refused") == episode, "one line per episode")
                #expect(publisher.publishedCount == (episode - 1) * fit, "nothing written while the lock is held")
                // The lock goes: what waited is written, and the episode ends with the queue empty.
                _ = try await lock.query("COMMIT", [])
                blocker.release(lock)
                #expect(await eventually(timeout: .seconds(20)) { publisher.publishedCount == episode * fit })
                refusedBefore += 40
            }
            #expect(running.service.statistics.stateChangesRefused == 80)
            #expect(recorder.count(containing: "publishes refused") == 2)
            publisher.stop()
            await onThread { group.shutdown() }
            await running.stop()
            await blocker.close()
            await pool.close()
        }

        @Test("a payload over the limit (64 KiB, or stateMaxPayload) is refused with a reason; nothing is delivered",
              arguments: [nil, 1024])
        func oversizePayloadRefused(configuredLimit: Int?) async throws {
            let pool = try await makePool(TestDatabase.sqliteFile.url())
            let running = try await RunningNameService(pool: pool) { configuration in
                if let configuredLimit { configuration.stateMaxPayload = configuredLimit }
            }
            let limit = configuredLimit ?? 64 * 1024
            let group = try EventLoopGroup(ioLoops: 1)
            let received = ReceivedChanges()
            let registration = try ServiceRegistration(
                loop: group.next(), nameServicePort: running.port, modid: uniqueModid(), cmdid: 1,
                host: LoadBalancing.Host(address: "10.4.0.3", port: 9000)!, ttl: .seconds(2),
                onStateChange: { received.append($0) })
            registration.start()
            #expect(await eventually { registration.acceptedCount >= 1 && running.service.statistics.stateRelayReady })
            #expect(registration.publish([UInt8](repeating: 7, count: limit + 1)))
            #expect(await eventually { running.service.statistics.stateChangesRefused == 1 })
            #expect(registration.publish([UInt8](repeating: 65, count: limit)))
            #expect(await eventually { received.payloads == [String(repeating: "A", count: limit)] })
            #expect(registration.publishedCount == 1)
            registration.stop()
            await onThread { group.shutdown() }
            await running.stop()
            await pool.close()
        }
    }
}

/// A trigger that makes every StateChange insert wait 0-30 ms between taking its id and committing (MySQL, PostgreSQL;
/// nothing on SQLite, which has one writer at a time).
enum SlowCommitTrigger {
    static func install(on pool: ConnectionPool) async throws {
        try await remove(from: pool)
        switch pool.dialect {
        case .mysql:
            try await pool.execute("""
                CREATE TRIGGER StateChangeSlowCommit AFTER INSERT ON StateChange FOR EACH ROW \
                SET @slow = SLEEP(RAND() * 0.03)
                """)
        case .postgres:
            try await pool.execute("""
                CREATE OR REPLACE FUNCTION state_change_slow_commit() RETURNS trigger AS $$ \
                BEGIN PERFORM pg_sleep(random() * 0.03); RETURN NEW; END $$ LANGUAGE plpgsql
                """)
            try await pool.execute("""
                CREATE TRIGGER state_change_slow_commit AFTER INSERT ON StateChange FOR EACH ROW \
                EXECUTE PROCEDURE state_change_slow_commit()
                """)
        case .sqlite:
            break
        }
    }

    static func remove(from pool: ConnectionPool) async throws {
        switch pool.dialect {
        case .mysql: try await pool.execute("DROP TRIGGER IF EXISTS StateChangeSlowCommit")
        case .postgres: try await pool.execute("DROP TRIGGER IF EXISTS state_change_slow_commit ON StateChange")
        case .sqlite: break
        }
    }
}
