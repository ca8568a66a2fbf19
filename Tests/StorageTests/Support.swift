import Dispatch
import Foundation
import Logging
import Storage
import Synchronization
import Testing
import TestSupport

/// A logger that prints warnings and errors only.
let testLogger: Logger = {
    var logger = Logger(label: "storage-tests")
    logger.logLevel = .warning
    return logger
}()

/// A table name no other test uses.
func uniqueTable(_ prefix: String) -> String {
    "\(prefix)_\(UInt32.random(in: 0...UInt32.max))"
}

/// Opens a pool for a test database.
func makePool(_ db: TestDatabase, _ configuration: PoolConfiguration = PoolConfiguration(minConnections: 0))
    throws -> ConnectionPool
{
    try ConnectionPool(url: db.url(), configuration: configuration, logger: testLogger)
}

/// Runs `body` with a pool and closes the pool afterwards, also when `body` throws.
func withPool<T>(_ db: TestDatabase, _ configuration: PoolConfiguration = PoolConfiguration(minConnections: 0),
                 _ body: (ConnectionPool) async throws -> T) async throws -> T {
    let pool = try makePool(db, configuration)
    do {
        let value = try await body(pool)
        await pool.close()
        return value
    } catch {
        await pool.close()
        throw error
    }
}

/// Drops a table, ignoring errors.
func dropTable(_ pool: ConnectionPool, _ table: String) async {
    _ = try? await pool.execute("DROP TABLE IF EXISTS \(table)")
}

/// Runs completions on a dispatch queue, like a reactor loop would on its thread.
final class QueueExecutor: StorageExecutor {
    let queue = DispatchQueue(label: "storage-tests.executor")
    let key = DispatchSpecificKey<Bool>()
    init() { queue.setSpecific(key: key, value: true) }
    func execute(_ work: @escaping @Sendable () -> Void) { queue.async(execute: work) }
    var isCurrent: Bool { DispatchQueue.getSpecific(key: key) == true }
}

/// Expects `body` to throw a StorageError of the kind named, and returns it.
@discardableResult
func expectStorageError(_ kind: String, sourceLocation: SourceLocation = #_sourceLocation,
                        _ body: () async throws -> Void) async -> StorageError? {
    do {
        try await body()
        Issue.record("expected a \(kind) error, got success", sourceLocation: sourceLocation)
        return nil
    } catch let error as StorageError {
        #expect(error.kind == kind, "expected \(kind), got \(error)", sourceLocation: sourceLocation)
        return error
    } catch {
        Issue.record("expected a StorageError.\(kind), got \(error)", sourceLocation: sourceLocation)
        return nil
    }
}

/// Runs scripts/db with one command (used to stop and start the test servers).
func runDBScript(_ command: String) async throws {
    let script = ProcessInfo.processInfo.environment["SWITCHYARD_TEST_DB_SCRIPT"]
        ?? URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .deletingLastPathComponent().appendingPathComponent("scripts/db").path
    let process = Process()
    process.executableURL = URL(fileURLWithPath: "/bin/bash")
    process.arguments = [script, command]
    let status = try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<Int32, Error>) in
        process.terminationHandler = { continuation.resume(returning: $0.terminationStatus) }
        do { try process.run() } catch { continuation.resume(throwing: error) }
    }
    guard status == 0 else { throw TestFailure("scripts/db \(command) failed with status \(status)") }
}
