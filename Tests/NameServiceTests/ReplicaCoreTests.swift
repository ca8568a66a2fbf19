import LarsProtocol
import LoadBalancing
@testable import NameService
import RouteStore
import Testing

/// Registrations shared through the database, without one: two cores (two replicas) hand each other their
/// written rows as the shell would (write, then read), on a mock clock.
@Suite("NameServiceCore: replicas")
struct ReplicaCoreTests {
    typealias Stored = NameServiceCore.StoredRegistration

    let a = RouteKey(modid: 1, cmdid: 1)
    let h1 = Host(address: "10.0.0.1", port: 1)!
    let h2 = Host(address: "10.0.0.2", port: 2)!
    let t0 = ContinuousClock.now
    let support = NameServiceCoreTests()

    func core(maxRegistrations: Int = 100) -> NameServiceCore {
        var configuration = NameServiceConfiguration(maxRegistrations: maxRegistrations)
        configuration.pollInterval = .seconds(1)
        configuration.registrationSyncInterval = .milliseconds(250)
        return NameServiceCore(limits: NameServiceCore.Limits(configuration))
    }

    /// A table of rows keyed by registration, as the database holds them (the last write of a key wins).
    struct Table {
        var rows: [NameServiceCore.RegistrationID: Stored] = [:]
        mutating func apply(_ writes: NameServiceCore.RegistrationWrites?) {
            for row in writes?.rows ?? [] { rows[row.id] = row }
        }
        var all: [Stored] { Array(rows.values) }
    }

    /// Takes the core's writes into the table and marks them written.
    func sync(_ core: inout NameServiceCore, into table: inout Table, at now: ContinuousClock.Instant) {
        guard let writes = core.takeWrites(now: now) else { return }
        table.apply(writes)
        core.writesDone(writes)
    }

    @Test("a host registered through one replica is served and pushed by the other; taken back, it goes there too")
    func registeredElsewhere() throws {
        var first = core(), second = core(), table = Table()
        _ = second.getRoute(a, from: 9)
        _ = first.register(support.request(a, h1, ttlMs: 10_000), from: 1, source: 7, now: t0)
        sync(&first, into: &table, at: t0)
        #expect(table.rows.count == 1)

        let learned = second.registrationsLoaded(table.all, complete: true, writtenThrough: second.writtenEpoch,
                                                 now: t0 + .milliseconds(300))
        #expect(learned.contains(.log(.registeredElsewhere(a, h1))))
        #expect(support.pushes(learned) == ["9 1/1"])
        #expect(second.snapshot.hosts(for: a) == [h1] && second.registrationCount == 1)
        // Its own rows read back change nothing on the first replica.
        #expect(first.registrationsLoaded(table.all, complete: true, writtenThrough: first.writtenEpoch,
                                          now: t0 + .milliseconds(300)).isEmpty)

        // Taken back on the first: a tombstone row; the second drops the host and pushes.
        _ = first.register(support.request(a, h1, ttlMs: 0), from: 1, source: 7, now: t0 + .seconds(1))
        sync(&first, into: &table, at: t0 + .seconds(1))
        #expect(table.rows.values.first?.takenBack == true, "a tombstone")
        let gone = second.registrationsLoaded(table.all, complete: false, writtenThrough: second.writtenEpoch,
                                              now: t0 + .milliseconds(1300))
        #expect(gone.contains(.log(.deregistered(a, h1))) && support.pushes(gone) == ["9 1/1"])
        #expect(second.snapshot.hosts(for: a).isEmpty && second.registrationCount == 0)
    }

    @Test("a host learned from the database runs out at its row's expiry plus the grace; a refresh there extends it")
    func remoteExpiry() throws {
        var first = core(), second = core(), table = Table()
        let grace = NameServiceCore.Limits(NameServiceConfiguration()).remoteGrace
        #expect(grace == .milliseconds(2250))
        _ = first.register(support.request(a, h1, ttlMs: 2000), from: 1, source: 7, now: t0)
        sync(&first, into: &table, at: t0)
        _ = second.registrationsLoaded(table.all, complete: false, writtenThrough: 0, now: t0)
        #expect(second.nextExpiry == t0 + .seconds(2) + grace)
        #expect(second.tick(now: t0 + .seconds(3)).isEmpty, "within the grace")
        // The row read again once it ran out (no tombstone): still served for the grace.
        #expect(second.registrationsLoaded(table.all, complete: false, writtenThrough: 0, now: t0 + .seconds(3))
            .isEmpty)
        #expect(second.registrationCount == 1)

        // The server heartbeats on the first replica: the new row moves the expiry on the second.
        _ = first.register(support.request(a, h1, ttlMs: 2000), from: 1, source: 7, now: t0 + .seconds(2))
        sync(&first, into: &table, at: t0 + .seconds(2))
        _ = second.registrationsLoaded(table.all, complete: false, writtenThrough: 0, now: t0 + .seconds(3))
        #expect(second.tick(now: t0 + .seconds(5)).isEmpty)
        let expired = second.tick(now: t0 + .seconds(4) + grace)
        #expect(expired.contains(.log(.registrationExpired(a, h1))) && second.registrationCount == 0)
    }

    @Test("a server that moves to another replica keeps its registration there, and the old replica follows the row")
    func serverMovesReplica() throws {
        var first = core(), second = core(), table = Table()
        _ = first.register(support.request(a, h1, ttlMs: 5000), from: 1, source: 7, now: t0)
        sync(&first, into: &table, at: t0)
        _ = second.registrationsLoaded(table.all, complete: true, writtenThrough: 0, now: t0)
        // The first replica's connection drops; the server registers through the second from now on.
        _ = second.register(support.request(a, h1, ttlMs: 5000), from: 4, source: 7, now: t0 + .seconds(3))
        sync(&second, into: &table, at: t0 + .seconds(3))
        #expect(table.rows.values.first?.expiry == t0 + .seconds(8))
        let followed = first.registrationsLoaded(table.all, complete: true, writtenThrough: first.writtenEpoch,
                                                 now: t0 + .seconds(4))
        #expect(!followed.contains(.log(.deregistered(a, h1))))
        #expect(first.tick(now: t0 + .seconds(6)).isEmpty, "past its own expiry, kept by the newer row")
        let grace = NameServiceCore.Limits(NameServiceConfiguration()).remoteGrace
        #expect(first.tick(now: t0 + .seconds(8) + grace - .milliseconds(1)).isEmpty,
                "served by the row, with the grace")
        #expect(first.tick(now: t0 + .seconds(8) + grace).contains(.log(.registrationExpired(a, h1))))
    }

    @Test("a read never undoes what this replica changed after it: unwritten registrations and tombstones are kept")
    func readRacesLocalChange() throws {
        var first = core(), second = core(), table = Table()
        // Written and read back on the first; then registered on the second but not written yet.
        _ = first.register(support.request(a, h1, ttlMs: 5000), from: 1, source: 7, now: t0)
        sync(&first, into: &table, at: t0)
        _ = second.register(support.request(a, h2, ttlMs: 5000), from: 2, source: 8, now: t0)
        let read = second.registrationsLoaded(table.all, complete: true, writtenThrough: second.writtenEpoch,
                                              now: t0 + .milliseconds(100))
        #expect(!read.contains(.log(.deregistered(a, h2))), "h2 is not in the table yet, but unwritten here")
        #expect(second.snapshot.hosts(for: a) == [h1, h2])

        // Taken back on the second before its tombstone is written: an old live row does not bring it back.
        _ = second.register(support.request(a, h1, ttlMs: 0), from: 2, source: 8, now: t0 + .milliseconds(200))
        let again = second.registrationsLoaded(table.all, complete: false, writtenThrough: second.writtenEpoch,
                                               now: t0 + .milliseconds(300))
        #expect(!again.contains(.log(.registeredElsewhere(a, h1))))
        #expect(second.snapshot.hosts(for: a) == [h2])

        // A complete read that began before a batch was written (writtenThrough older) keeps what the batch held.
        let before = second.writtenEpoch
        sync(&second, into: &table, at: t0 + .milliseconds(400))
        let stale = second.registrationsLoaded([], complete: true, writtenThrough: before, now: t0 + .seconds(1))
        #expect(stale.isEmpty && second.snapshot.hosts(for: a) == [h2])
        // One that began after it (an empty table: every row deleted elsewhere) drops it.
        let emptied = second.registrationsLoaded([], complete: true, writtenThrough: second.writtenEpoch,
                                                 now: t0 + .seconds(1))
        #expect(emptied.contains(.log(.deregistered(a, h2))) && second.registrationCount == 0)
    }

    @Test("a failed batch is written again with the next one, as the registrations are then")
    func failedWritesRetry() throws {
        var first = core()
        _ = first.register(support.request(a, h1, ttlMs: 5000), from: 1, source: 7, now: t0)
        _ = first.register(support.request(a, h2, ttlMs: 5000), from: 1, source: 7, now: t0)
        let taken = first.takeWrites(now: t0)
        let failed = try #require(taken)
        #expect(failed.rows.count == 2)
        #expect(first.takeWrites(now: t0) == nil, "nothing new")
        first.writesFailed(failed)
        _ = first.register(support.request(a, h2, ttlMs: 0), from: 1, source: 7, now: t0 + .seconds(1))
        let again = first.takeWrites(now: t0 + .seconds(1))
        let retried = try #require(again)
        let byHost = Dictionary(uniqueKeysWithValues: retried.rows.map { ($0.id.host, $0) })
        #expect(byHost[h1]?.expiry == t0 + .seconds(5) && byHost[h1]?.source == 7)
        #expect(byHost[h2]?.takenBack == true, "h2 was taken back meanwhile: a tombstone")
        #expect(retried.epoch == failed.epoch + 1)
    }

    @Test("rows from the database count against the registration limit; a row over it is not served")
    func remoteRowsBounded() throws {
        var second = core(maxRegistrations: 1)
        let rows = [h1, h2].map { Stored(id: .init(key: a, host: $0), expiry: t0 + .seconds(5), source: 3, load: nil) }
        _ = second.registrationsLoaded(rows, complete: false, writtenThrough: 0, now: t0)
        #expect(second.registrationCount == 1)
        let refused = second.register(support.request(a, Host(address: "10.0.0.3", port: 3)!, ttlMs: 1000), from: 1,
                                      source: 9, now: t0)
        #expect(try support.registerReply(refused)?.ok == false)
    }
}
