import ArgumentParser
import Logging
import SwitchyardBench
import Foundation
import Storage

struct StorageBenchCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "storage",
        abstract: "Queries per second through the connection pool against one bare connection."
    )

    @Option(help: "Database URL: sqlite:PATH, mysql://user:pass@127.0.0.1:3306/db, postgres://...")
    var db = "sqlite:switchyard-bench.sqlite"
    @Option(help: "Seconds per row.") var seconds = 2
    @Option(help: "Concurrent callers, comma separated.") var callers = "1,4,16"
    @OptionGroup var output: JSONOutputOption

    /// One row of the `--json` result.
    struct Row: Encodable {
        let driver: String
        let mode: String
        let callers: Int
        let connections: Int
        let queries: Int
        let seconds: Double
        let queriesPerSecond: Double
        let meanLatencyMicroseconds: Double
    }

    func validate() throws {
        guard seconds > 0 && seconds <= 600 else { throw ValidationError("--seconds must be 1...600") }
        guard parsedCallers != nil else { throw ValidationError("--callers must be positive integers, e.g. 1,4,16") }
    }

    var parsedCallers: [Int]? {
        let list = callers.split(separator: ",").compactMap { Int($0.trimmingCharacters(in: .whitespaces)) }
        return list.isEmpty || list.contains { $0 <= 0 } ? nil : list
    }

    func run() async throws {
        let logger = Logger(label: "switchyard.bench.storage")
        let results = try await StorageBenchmark.run(
            url: db, concurrencies: parsedCallers ?? [1, 4, 16], duration: .seconds(seconds), logger: logger)
        if output.json {
            try output.emit(results.map {
                Row(driver: $0.driver, mode: "\($0.mode)", callers: $0.concurrency, connections: $0.connections,
                    queries: $0.queries, seconds: $0.seconds, queriesPerSecond: $0.queriesPerSecond,
                    meanLatencyMicroseconds: $0.meanLatencyMicroseconds)
            })
        } else {
            print(StorageBenchmark.table(results))
        }
    }
}
