import Logging
import Storage
import SwitchyardCore

/// Measures queries per second through a ``ConnectionPool`` and through one bare ``SQLConnection``, with 1, 4
/// and 16 concurrent callers by default. Each query is a primary-key lookup with one bound parameter in a small
/// table the benchmark creates (`switchyard_bench_<n>`) and drops afterwards.
///
/// The CLI wires this to `switchyard bench storage --db URL`:
///
///     let results = try await StorageBenchmark.run(url: "sqlite:/tmp/bench.db", logger: logger)
///     print(StorageBenchmark.table(results))
public enum StorageBenchmark {
    /// What carried the queries.
    public enum Mode: String, Sendable {
        /// A pool of ``Result/connections`` connections shared by the callers.
        case pool
        /// One connection shared by all callers (statements queue on its worker thread).
        case connection
    }

    /// One measurement.
    public struct Result: Sendable, Hashable {
        /// The driver (`sqlite`, `mysql`, `postgres`).
        public var driver: String
        /// Pool or bare connection.
        public var mode: Mode
        /// Concurrent callers.
        public var concurrency: Int
        /// Connections that served them (1 for a bare connection).
        public var connections: Int
        /// Queries completed in the measured interval.
        public var queries: Int
        /// The measured interval in seconds.
        public var seconds: Double
        /// Queries per second.
        public var queriesPerSecond: Double { seconds > 0 ? Double(queries) / seconds : 0 }
        /// Mean time of one query as seen by a caller, in microseconds.
        public var meanLatencyMicroseconds: Double {
            queries > 0 ? seconds * 1e6 * Double(concurrency) / Double(queries) : 0
        }
    }

    /// Runs the benchmark.
    ///
    /// - Parameters:
    ///   - url: The database URL (see ``DatabaseURL``). For SQLite use a file; `sqlite::memory:` works but the
    ///     pool and the bare connection then use two separate in-memory databases.
    ///   - concurrencies: Numbers of concurrent callers to measure.
    ///   - duration: Measured time per (mode, concurrency) pair, after a short warm-up.
    ///   - poolSize: The pool's maximum connections (it opens `min(poolSize, callers)`).
    ///   - rows: Rows in the lookup table.
    ///   - logger: Passed to the pool.
    /// - Returns: One result per mode and concurrency: pool first, then bare connection, by concurrency.
    public static func run(url: String, concurrencies: [Int] = [1, 4, 16], duration: Duration = .seconds(2),
                           poolSize: Int = 8, rows: Int = 1000, logger: Logger) async throws -> [Result] {
        let parsed = try DatabaseURL(url)
        let table = "switchyard_bench_\(UInt32.random(in: 0...UInt32.max))"
        var results: [Result] = []

        for concurrency in concurrencies {
            let size = max(1, min(poolSize, concurrency))
            let pool = try ConnectionPool(
                url: parsed,
                configuration: PoolConfiguration(minConnections: size, maxConnections: size,
                                                 acquireTimeout: .seconds(30)),
                logger: logger)
            do {
                try await prepare(pool, table: table, rows: rows)
                let (queries, seconds) = try await measure(pool, table: table, rows: rows, callers: concurrency,
                                                           duration: duration)
                results.append(Result(driver: parsed.driver.rawValue, mode: .pool, concurrency: concurrency,
                                      connections: pool.statistics.highWater, queries: queries, seconds: seconds))
                await pool.close()
            } catch {
                await pool.close()
                throw error
            }
        }

        let connection = try await SQLConnection.connect(to: url, logger: logger)
        do {
            try await prepare(connection, table: table, rows: rows)
            for concurrency in concurrencies {
                let (queries, seconds) = try await measure(connection, table: table, rows: rows,
                                                           callers: concurrency, duration: duration)
                results.append(Result(driver: parsed.driver.rawValue, mode: .connection, concurrency: concurrency,
                                      connections: 1, queries: queries, seconds: seconds))
            }
            _ = try? await connection.execute("DROP TABLE IF EXISTS \(table)")
            await connection.close()
        } catch {
            _ = try? await connection.execute("DROP TABLE IF EXISTS \(table)")
            await connection.close()
            throw error
        }
        return results
    }

    /// The results as an aligned text table.
    public static func table(_ results: [Result]) -> String {
        var lines = ["driver    mode        callers  conns   queries/s   mean latency"]
        for r in results {
            lines.append(
                pad(r.driver, 10) + pad(r.mode.rawValue, 12) + pad(String(r.concurrency), 9, left: true)
                    + pad(String(r.connections), 7, left: true)
                    + pad(String(Int(r.queriesPerSecond.rounded())), 12, left: true)
                    + pad(String(Int(r.meanLatencyMicroseconds.rounded())) + " us", 15, left: true))
        }
        return lines.joined(separator: "\n")
    }

    private static func pad(_ text: String, _ width: Int, left: Bool = false) -> String {
        let fill = String(repeating: " ", count: max(0, width - text.count))
        return left ? fill + text : text + fill
    }

    /// Creates the table if needed and fills it with `rows` rows.
    private static func prepare(_ db: some SQLQueryable, table: String, rows: Int) async throws {
        let d = db.dialect
        try await db.execute("CREATE TABLE IF NOT EXISTS \(table) (k \(d.bigintType) PRIMARY KEY, v \(d.varchar(64)))\(d.tableOptions)")
        try await db.execute("DELETE FROM \(table)")
        var k = 0
        while k < rows {
            let batch = min(100, rows - k)
            let values = Array(repeating: "(?, ?)", count: batch).joined(separator: ", ")
            var parameters: [SQLValue] = []
            for i in k..<(k + batch) {
                parameters.append(.integer(Int64(i)))
                parameters.append(.text("value-\(i)"))
            }
            try await db.execute("INSERT INTO \(table) (k, v) VALUES \(values)", parameters)
            k += batch
        }
    }

    /// Runs `callers` loops of lookups for a short warm-up and then for `duration`; returns the count and time.
    private static func measure(_ db: some SQLQueryable, table: String, rows: Int, callers: Int,
                                duration: Duration) async throws -> (Int, Double) {
        let sql = "SELECT v FROM \(table) WHERE k = ?"
        let clock = ContinuousClock()
        let warmUpEnd = clock.now.advanced(by: .milliseconds(200))
        let end = warmUpEnd.advanced(by: duration)
        let counts = try await withThrowingTaskGroup(of: Int.self) { group in
            for caller in 0..<callers {
                group.addTask {
                    var generator = SplitMix64(seed: UInt64(caller + 1))
                    var count = 0
                    while true {
                        let now = clock.now
                        if now >= end { break }
                        let key = Int64(generator.next() % UInt64(rows))
                        let result = try await db.query(sql, [.integer(key)])
                        precondition(result.rows.count == 1, "benchmark lookup found no row")
                        if now >= warmUpEnd { count += 1 }
                    }
                    return count
                }
            }
            return try await group.reduce(0, +)
        }
        return (counts, duration.secondsValue)
    }
}
