import Foundation

/// The databases the storage-backed tests run on: SQLite always (a fresh file, or in memory); MySQL and PostgreSQL
/// when their trait is in this build. A server's URL comes from the environment (`scripts/db start && source
/// .build-db/env`); when the driver is built but the URL is missing, `url()` throws: the test fails rather than
/// skips.
public enum TestDatabase: String, CustomStringConvertible, Sendable, CaseIterable {
    case sqliteFile
    case sqliteMemory
    case mysql
    case postgres
    /// The database agent (`agent://`) in front of a fresh SQLite file, started in this process (``TestAgent``).
    case agent

    public var description: String { rawValue }

    /// Every database of this build (the storage driver tests).
    public static var all: [TestDatabase] { [.sqliteFile, .sqliteMemory] + servers }

    /// A fresh SQLite file and the server databases of this build: for services whose data must outlive a
    /// connection or a restart (an in-memory SQLite database lives only as long as its connection).
    public static var fileAndServers: [TestDatabase] { [.sqliteFile] + servers }

    /// ``fileAndServers`` and the database agent in front of a fresh SQLite file: for the services' suites, which
    /// must run unchanged through the agent:// driver.
    public static var fileServersAndAgent: [TestDatabase] { fileAndServers + [.agent] }

    /// The server databases of this build.
    public static var servers: [TestDatabase] {
        var result: [TestDatabase] = []
        #if MySQL
        result.append(.mysql)
        #endif
        #if PostgreSQL
        result.append(.postgres)
        #endif
        return result
    }

    /// The environment variable that holds a server's URL (nil for SQLite).
    public var environmentVariable: String? {
        switch self {
        case .sqliteFile, .sqliteMemory, .agent: return nil
        case .mysql: return "SWITCHYARD_TEST_MYSQL_URL"
        case .postgres: return "SWITCHYARD_TEST_POSTGRES_URL"
        }
    }

    /// The URL to test against: a fresh SQLite file, SQLite in memory, or the server's database. Fails (does not
    /// skip) when a server's URL is missing. The server databases keep their tables between runs (and another run
    /// may use them at the same time): tests that use them take unique names (tables, module ids, users).
    public func url() throws -> String {
        switch self {
        case .sqliteFile:
            return temporarySQLiteURL()
        case .sqliteMemory:
            return "sqlite::memory:"
        case .agent:
            return try TestAgent.start()
        case .mysql, .postgres:
            let variable = environmentVariable!
            guard let url = ProcessInfo.processInfo.environment[variable], !url.isEmpty else {
                throw TestFailure(
                    "\(variable) is not set, but the \(self) driver is built: "
                        + "run `scripts/db start && source .build-db/env` before `swift test --traits MySQL,PostgreSQL`")
            }
            return url
        }
    }

    /// The name of scripts/db's commands for this server (`mysql`, `postgres`).
    public var serverName: String { self == .mysql ? "mysql" : "postgres" }
}

/// A fresh path in the tests' temporary folder (shared by every test target; the names are unique).
public func temporaryFile(_ prefix: String, _ suffix: String = ".sqlite") -> URL {
    let dir = FileManager.default.temporaryDirectory.appendingPathComponent("switchyard-tests")
    try? FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
    return dir.appendingPathComponent("\(prefix)-\(UUID().uuidString)\(suffix)")
}

/// The URL of a fresh SQLite file in the tests' temporary folder.
public func temporarySQLiteURL(_ prefix: String = "db") -> String {
    "sqlite:" + temporaryFile(prefix).path
}
