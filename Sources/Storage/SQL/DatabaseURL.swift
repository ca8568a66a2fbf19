/// A parsed database URL. The scheme picks the driver:
///
///     sqlite:relative/path.db          sqlite:/absolute/path.db     sqlite:///absolute/path.db
///     sqlite::memory:                  (one in-memory database shared by the pool's connections)
///     mysql://user:pass@127.0.0.1:3306/db        (also mariadb://)
///     postgres://user:pass@127.0.0.1:5432/db     (also postgresql://)
///     agent://127.0.0.1:7795?token=SECRET        (the database agent, `switchyard db-agent`; see AgentDriver)
///
/// User, password and database are percent-decoded. Query items (`?connect_timeout=3`) are kept in ``options``
/// and passed to the server drivers where they mean something (see each driver).
public struct DatabaseURL: Sendable, Hashable {
    /// The driver a URL names.
    public enum Driver: String, Sendable, Hashable, CaseIterable {
        /// SQLite through the system libsqlite3: always built.
        case sqlite
        /// MySQL or MariaDB through libmariadb: built with the `MySQL` trait.
        case mysql
        /// PostgreSQL through libpq: built with the `PostgreSQL` trait.
        case postgres
        /// The database agent over its frames (ids 300+): always built; the agent links the database library.
        case agent

        /// Whether this build includes the driver.
        public var isAvailable: Bool {
            switch self {
            case .sqlite, .agent: return true
            case .mysql:
                #if MySQL
                return true
                #else
                return false
                #endif
            case .postgres:
                #if PostgreSQL
                return true
                #else
                return false
                #endif
            }
        }
    }

    /// The driver.
    public var driver: Driver
    /// Server host name or address (server drivers).
    public var host: String
    /// Server port (server drivers; 3306, 5432 and 7795 by default).
    public var port: Int
    /// User name (server drivers).
    public var user: String
    /// Password (server drivers). Never printed by ``description``.
    public var password: String
    /// Database name (server drivers).
    public var database: String
    /// File path or `:memory:` (SQLite).
    public var path: String
    /// Query items of the URL (`agent://`: `token`, and optionally `dialect`, `connect_timeout`).
    public var options: [String: String]

    /// `true` for `sqlite::memory:`.
    public var isMemory: Bool { driver == .sqlite && path == ":memory:" }

    /// Parses a URL. Throws ``StorageError/badURL(_:)`` with the reason.
    public init(_ string: String) throws {
        func bad(_ why: String) -> StorageError {
            .badURL(.init("bad database URL '\(DatabaseURL.redact(string))': \(why)"))
        }
        guard let colon = string.firstIndex(of: ":") else {
            throw bad("no scheme; expected sqlite:PATH, mysql://..., postgres://... or agent://...")
        }
        let scheme = string[..<colon].lowercased()
        var rest = Substring(string[string.index(after: colon)...])
        self.host = ""
        self.port = 0
        self.user = ""
        self.password = ""
        self.database = ""
        self.path = ""
        self.options = [:]

        switch scheme {
        case "sqlite", "sqlite3":
            self.driver = .sqlite
            if rest.hasPrefix("//") { rest = rest.dropFirst(2) }
            if let q = rest.firstIndex(of: "?"), rest != ":memory:" {
                self.options = try Self.parseQuery(rest[rest.index(after: q)...], bad: bad)
                rest = rest[..<q]
            }
            guard !rest.isEmpty else { throw bad("empty path; use sqlite:FILE or sqlite::memory:") }
            self.path = String(rest)
            return
        case "mysql", "mariadb":
            self.driver = .mysql
            self.port = 3306
        case "postgres", "postgresql":
            self.driver = .postgres
            self.port = 5432
        case "agent":
            self.driver = .agent
            self.port = 7795
        default:
            throw bad("unknown scheme '\(scheme)'; expected sqlite, mysql, postgres or agent")
        }

        guard rest.hasPrefix("//") else { throw bad("expected '\(scheme)://user:password@host:port/database'") }
        rest = rest.dropFirst(2)
        if let q = rest.firstIndex(of: "?") {
            self.options = try Self.parseQuery(rest[rest.index(after: q)...], bad: bad)
            rest = rest[..<q]
        }
        var authority = rest
        if let slash = rest.firstIndex(of: "/") {
            authority = rest[..<slash]
            self.database = try Self.percentDecode(rest[rest.index(after: slash)...], bad: bad)
        }
        if let at = authority.lastIndex(of: "@") {
            let credentials = authority[..<at]
            authority = authority[authority.index(after: at)...]
            if let c = credentials.firstIndex(of: ":") {
                self.user = try Self.percentDecode(credentials[..<c], bad: bad)
                self.password = try Self.percentDecode(credentials[credentials.index(after: c)...], bad: bad)
            } else {
                self.user = try Self.percentDecode(credentials, bad: bad)
            }
        }
        var hostPart = authority
        var portPart: Substring? = nil
        if authority.hasPrefix("[") {
            guard let close = authority.firstIndex(of: "]") else { throw bad("unterminated IPv6 address") }
            hostPart = authority[authority.index(after: authority.startIndex)..<close]
            let after = authority[authority.index(after: close)...]
            if after.hasPrefix(":") { portPart = after.dropFirst() } else if !after.isEmpty { throw bad("junk after ']'") }
        } else if let c = authority.lastIndex(of: ":") {
            hostPart = authority[..<c]
            portPart = authority[authority.index(after: c)...]
        }
        guard !hostPart.isEmpty else { throw bad("no host") }
        self.host = String(hostPart)
        if let portPart {
            guard let port = Int(portPart), (1...65535).contains(port) else { throw bad("bad port '\(portPart)'") }
            self.port = port
        }
        if driver == .agent {
            guard let token = options["token"], !token.isEmpty else { throw bad("agent:// needs ?token=SECRET") }
            if let dialect = options["dialect"], SQLDialect(rawValue: dialect) == nil {
                throw bad("unknown dialect '\(dialect)'; expected sqlite, mysql or postgres")
            }
        }
    }

    /// Creates a SQLite URL for a file path or `:memory:`.
    public init(sqlitePath path: String) {
        self.driver = .sqlite
        self.path = path
        self.host = ""
        self.port = 0
        self.user = ""
        self.password = ""
        self.database = ""
        self.options = [:]
    }

    private static func parseQuery(_ query: Substring, bad: (String) -> StorageError) throws -> [String: String] {
        var result: [String: String] = [:]
        for item in query.split(separator: "&") where !item.isEmpty {
            if let eq = item.firstIndex(of: "=") {
                result[try percentDecode(item[..<eq], bad: bad)] = try percentDecode(item[item.index(after: eq)...], bad: bad)
            } else {
                result[try percentDecode(item, bad: bad)] = ""
            }
        }
        return result
    }

    private static func percentDecode(_ text: Substring, bad: (String) -> StorageError) throws -> String {
        guard text.contains("%") else { return String(text) }
        var bytes: [UInt8] = []
        var utf8 = text.utf8.makeIterator()
        while let byte = utf8.next() {
            if byte == UInt8(ascii: "%") {
                guard let high = utf8.next(), let low = utf8.next(),
                    let value = UInt8(String(decoding: [high, low], as: UTF8.self), radix: 16)
                else { throw bad("bad percent escape") }
                bytes.append(value)
            } else {
                bytes.append(byte)
            }
        }
        return String(decoding: bytes, as: UTF8.self)
    }

    /// The URL text with the password (and an agent token) replaced by `***`.
    static func redact(_ text: String) -> String {
        var text = text
        if let token = text.range(of: "token=") {
            let end = text[token.upperBound...].firstIndex(of: "&") ?? text.endIndex
            text.replaceSubrange(token.upperBound..<end, with: "***")
        }
        guard let schemeEnd = text.range(of: "://"), let at = text.lastIndex(of: "@"), at > schemeEnd.upperBound
        else { return text }
        let credentials = text[schemeEnd.upperBound..<at]
        guard let colon = credentials.firstIndex(of: ":") else { return text }
        return String(text[..<colon]) + ":***" + String(text[at...])
    }
}

extension DatabaseURL: CustomStringConvertible {
    /// The URL without its password.
    public var description: String {
        switch driver {
        case .sqlite: return "sqlite:" + path
        case .mysql, .postgres:
            let hostText = host.contains(":") ? "[\(host)]" : host
            let auth = user.isEmpty ? "" : user + (password.isEmpty ? "" : ":***") + "@"
            return "\(driver.rawValue)://\(auth)\(hostText):\(port)/\(database)"
        case .agent:
            let hostText = host.contains(":") ? "[\(host)]" : host
            return "agent://\(hostText):\(port)" + (options["dialect"].map { "?dialect=\($0)" } ?? "")
        }
    }
}
