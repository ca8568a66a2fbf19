/// The SQL differences services meet when one schema and one set of statements must run on SQLite,
/// MySQL/MariaDB and PostgreSQL. Statements use `?` placeholders on every database.
///
///     let d = pool.dialect
///     try await pool.execute("""
///         CREATE TABLE IF NOT EXISTS users (id \(d.autoIncrementPrimaryKey), name \(d.varchar(64)) NOT NULL UNIQUE,
///         avatar \(d.blobType))\(d.tableOptions)
///         """)
///     try await pool.execute(d.upsert(table: "stats", columns: ["host", "calls"], conflict: ["host"]), ["a", 1])
public enum SQLDialect: String, Sendable, Hashable {
    /// SQLite 3.24 or later.
    case sqlite
    /// MySQL 5.7+/MariaDB 10.3+.
    case mysql
    /// PostgreSQL 10 or later.
    case postgres

    /// The dialect of a driver; `nil` for ``DatabaseURL/Driver/agent``, whose dialect is the database's behind the
    /// agent (the URL's `dialect` option, or the agent's answer).
    public init?(_ driver: DatabaseURL.Driver) {
        switch driver {
        case .sqlite: self = .sqlite
        case .mysql: self = .mysql
        case .postgres: self = .postgres
        case .agent: return nil
        }
    }

    /// A column definition for a 64-bit auto-incremented primary key:
    /// `INTEGER PRIMARY KEY AUTOINCREMENT`, `BIGINT PRIMARY KEY AUTO_INCREMENT` or `BIGSERIAL PRIMARY KEY`.
    public var autoIncrementPrimaryKey: String {
        switch self {
        case .sqlite: return "INTEGER PRIMARY KEY AUTOINCREMENT"
        case .mysql: return "BIGINT PRIMARY KEY AUTO_INCREMENT"
        case .postgres: return "BIGSERIAL PRIMARY KEY"
        }
    }

    /// A 64-bit integer column type.
    public var bigintType: String { self == .sqlite ? "INTEGER" : "BIGINT" }

    /// A double precision column type.
    public var doubleType: String {
        switch self {
        case .sqlite: return "REAL"
        case .mysql: return "DOUBLE"
        case .postgres: return "DOUBLE PRECISION"
        }
    }

    /// An unbounded text column type (`LONGTEXT` on MySQL, whose `TEXT` stops at 64 KiB).
    public var textType: String { self == .mysql ? "LONGTEXT" : "TEXT" }

    /// A bounded string type usable in keys and unique constraints (`VARCHAR(n)`; `TEXT` on SQLite).
    public func varchar(_ length: Int) -> String { self == .sqlite ? "TEXT" : "VARCHAR(\(length))" }

    /// A binary column type: `BLOB`, `LONGBLOB` or `BYTEA`.
    public var blobType: String {
        switch self {
        case .sqlite: return "BLOB"
        case .mysql: return "LONGBLOB"
        case .postgres: return "BYTEA"
        }
    }

    /// Text to append after `CREATE TABLE (...)`: InnoDB and utf8mb4 on MySQL, nothing elsewhere.
    public var tableOptions: String {
        self == .mysql ? " ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin" : ""
    }

    /// The statement that starts a transaction (`BEGIN IMMEDIATE` on SQLite, so that writers queue on the busy
    /// timeout instead of failing at their first write).
    public var beginTransaction: String {
        switch self {
        case .sqlite: return "BEGIN IMMEDIATE"
        case .mysql: return "START TRANSACTION"
        case .postgres: return "BEGIN"
        }
    }

    /// Quotes an identifier: `"name"`, or `` `name` `` on MySQL.
    public func quoteIdentifier(_ name: String) -> String {
        if self == .mysql { return "`" + name.replacingAll("`", with: "``") + "`" }
        return "\"" + name.replacingAll("\"", with: "\"\"") + "\""
    }

    /// An insert-or-update statement with one `?` per column, in `columns` order.
    ///
    /// - Parameters:
    ///   - table: The table.
    ///   - columns: All the columns inserted.
    ///   - conflict: The columns of the primary key or unique index that decide "already there"
    ///     (MySQL uses whichever unique key collides; the list still matters for SQLite and PostgreSQL).
    ///   - update: The columns overwritten when the row exists; by default every column not in `conflict`.
    ///     When empty, an existing row is left as it is.
    /// - Returns: `INSERT ... ON CONFLICT (...) DO UPDATE SET c = excluded.c` (SQLite, PostgreSQL) or
    ///   `INSERT ... ON DUPLICATE KEY UPDATE c = VALUES(c)` (MySQL).
    public func upsert(table: String, columns: [String], conflict: [String], update: [String]? = nil) -> String {
        let update = update ?? columns.filter { !conflict.contains($0) }
        let placeholders = Array(repeating: "?", count: columns.count).joined(separator: ", ")
        var sql = "INSERT INTO \(table) (\(columns.joined(separator: ", "))) VALUES (\(placeholders))"
        switch self {
        case .sqlite, .postgres:
            sql += " ON CONFLICT (\(conflict.joined(separator: ", ")))"
            if update.isEmpty {
                sql += " DO NOTHING"
            } else {
                sql += " DO UPDATE SET " + update.map { "\($0) = excluded.\($0)" }.joined(separator: ", ")
            }
        case .mysql:
            let target = update.isEmpty ? [conflict.first ?? columns[0]] : update
            sql += " ON DUPLICATE KEY UPDATE " + target.map {
                update.isEmpty ? "\($0) = \($0)" : "\($0) = VALUES(\($0))"
            }.joined(separator: ", ")
        }
        return sql
    }

    /// The clause to append to an `INSERT` so that the result carries the new id: ` RETURNING id` on PostgreSQL,
    /// empty elsewhere (use ``SQLResult/lastInsertID``). ``SQLQueryable/insert(_:_:idColumn:)`` does both.
    public func returningID(_ column: String = "id") -> String {
        self == .postgres ? " RETURNING \(column)" : ""
    }
}

extension String {
    func replacingAll(_ target: Character, with replacement: String) -> String {
        var result = ""
        result.reserveCapacity(count)
        for c in self {
            if c == target { result += replacement } else { result.append(c) }
        }
        return result
    }
}
