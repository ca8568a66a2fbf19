import CSQLite
import SwitchyardCore
import Synchronization

/// Opens SQLite connections. Files get WAL journaling and a busy timeout; `:memory:` becomes one in-memory
/// database shared by all connections of the connector (SQLite's `memdb` VFS), kept alive by an anchor
/// connection until ``shutdown()``.
final class SQLiteConnector: DriverConnector {
    let dialect = SQLDialect.sqlite
    private let filename: String
    private let isMemory: Bool
    private let options: DriverOptions
    /// The connection that keeps a shared in-memory database alive.
    private let anchor: Mutex<SQLiteHandle?>

    private static let memoryCounter = Atomic<Int>(0)

    init(url: DatabaseURL, options: DriverOptions) throws {
        self.options = options
        self.isMemory = url.isMemory
        if url.isMemory {
            let n = Self.memoryCounter.add(1, ordering: .relaxed).oldValue
            self.filename = "file:/switchyard-memory-\(n)?vfs=memdb"
            self.anchor = Mutex(nil)
            let anchor = try SQLiteConnection.open(filename: filename, uri: true, options: options, wal: false)
            self.anchor.withLock { $0 = SQLiteHandle(anchor) }
        } else {
            self.filename = url.path
            self.anchor = Mutex(nil)
        }
    }

    func connect(timeout: Duration) throws -> DriverConnection {
        try SQLiteConnection.open(filename: filename, uri: isMemory, options: options, wal: !isMemory && options.sqliteWAL)
    }

    func shutdown() {
        let anchor = self.anchor.withLock { anchor -> SQLiteHandle? in
            defer { anchor = nil }
            return anchor
        }
        anchor?.connection.close()
    }

    /// Holds the anchor connection.
    ///
    /// `@unchecked Sendable`: the anchor only keeps the database alive; it runs no statement after `open` and is
    /// closed once, under the connector's mutex, so no two threads ever use it.
    private final class SQLiteHandle: @unchecked Sendable {
        let connection: SQLiteConnection
        init(_ connection: SQLiteConnection) { self.connection = connection }
    }
}

/// One SQLite connection (`sqlite3*`), opened in multi-thread mode: used by one thread at a time.
final class SQLiteConnection: DriverConnection {
    private var db: OpaquePointer?

    private init(db: OpaquePointer) {
        self.db = db
    }

    static func open(filename: String, uri: Bool, options: DriverOptions, wal: Bool) throws -> SQLiteConnection {
        var handle: OpaquePointer?
        var flags = SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX
        if uri { flags |= SQLITE_OPEN_URI }
        let rc = sqlite3_open_v2(filename, &handle, flags, nil)
        guard rc == SQLITE_OK, let handle else {
            let message = handle.map { String(cString: sqlite3_errmsg($0)) } ?? String(cString: sqlite3_errstr(rc))
            sqlite3_close_v2(handle)
            throw StorageError.connectionFailed(.init("cannot open SQLite database '\(filename)': \(message)",
                                                      code: String(rc), driver: "sqlite"))
        }
        sqlite3_extended_result_codes(handle, 1)
        sqlite3_busy_timeout(handle, Int32(clamping: options.sqliteBusyTimeout.millisecondsRoundedUp))
        let connection = SQLiteConnection(db: handle)
        do {
            if wal {
                let mode = try connection.execute("PRAGMA journal_mode=WAL", []).rows.first?[0].string
                if mode?.lowercased() != "wal" {
                    throw StorageError.connectionFailed(.init(
                        "SQLite database '\(filename)' refused WAL journaling (got \(mode ?? "nothing"))",
                        driver: "sqlite"))
                }
                _ = try connection.execute("PRAGMA synchronous=NORMAL", [])
            }
            _ = try connection.execute("PRAGMA foreign_keys=ON", [])
        } catch {
            connection.close()
            // Opening a file that is not a database fails only at the first statement.
            if case .connectionFailed = error as? StorageError { throw error }
            throw StorageError.connectionFailed(StorageError.wrap(error).detail)
        }
        return connection
    }

    func execute(_ sql: String, _ parameters: [SQLValue]) throws -> SQLResult {
        guard let db else { throw StorageError.connectionLost(.init("the SQLite connection is closed")) }
        var result = SQLResult()
        var nextParameter = 0
        let utf8 = Array(sql.utf8)
        try utf8.withUnsafeBufferPointer { buffer in
            guard let base = buffer.baseAddress else { return }
            let start = UnsafeRawPointer(base).assumingMemoryBound(to: CChar.self)
            var cursor = start
            let end = start + buffer.count
            while cursor < end {
                var statement: OpaquePointer?
                var tail: UnsafePointer<CChar>?
                let rc = sqlite3_prepare_v2(db, cursor, Int32(end - cursor), &statement, &tail)
                guard rc == SQLITE_OK else { throw error(rc, preparing: true) }
                guard let statement else { break }  // only whitespace or comments left
                defer { sqlite3_finalize(statement) }
                cursor = tail ?? end

                let count = Int(sqlite3_bind_parameter_count(statement))
                guard nextParameter + count <= parameters.count else {
                    throw StorageError.syntax(.init(
                        "the statement has more placeholders than the \(parameters.count) parameters given",
                        driver: "sqlite"))
                }
                for i in 0..<count {
                    try bind(parameters[nextParameter + i], at: Int32(i + 1), in: statement)
                }
                nextParameter += count

                let columnCount = Int(sqlite3_column_count(statement))
                var columns = SQLColumns([])
                var rows: [[SQLValue]] = []
                while true {
                    let step = sqlite3_step(statement)
                    if step == SQLITE_DONE { break }
                    guard step == SQLITE_ROW else { throw error(step, preparing: false) }
                    rows.append(values(of: statement, count: columnCount))
                }
                if columnCount > 0 {
                    columns = Self.columns(of: statement, firstRow: rows.first)
                    result.columns = columns
                    result.rows = rows.map { SQLRow(columns: columns, values: $0) }
                }
            }
        }
        guard nextParameter == parameters.count else {
            throw StorageError.syntax(.init(
                "\(parameters.count) parameters given for \(nextParameter) placeholders", driver: "sqlite"))
        }
        result.affectedRows = Int64(sqlite3_changes(db))
        result.lastInsertID = sqlite3_last_insert_rowid(db)
        return result
    }

    func stream(_ sql: String, _ parameters: [SQLValue]) throws -> DriverStream {
        guard let db else { throw StorageError.connectionLost(.init("the SQLite connection is closed")) }
        var statement: OpaquePointer?
        var tail: UnsafePointer<CChar>?
        let utf8 = Array(sql.utf8)
        let rest = try utf8.withUnsafeBufferPointer { buffer -> String in
            guard let base = buffer.baseAddress else { return "" }
            let start = UnsafeRawPointer(base).assumingMemoryBound(to: CChar.self)
            let rc = sqlite3_prepare_v2(db, start, Int32(buffer.count), &statement, &tail)
            guard rc == SQLITE_OK else { throw error(rc, preparing: true) }
            let used = tail.map { $0 - start } ?? buffer.count
            return String(decoding: buffer[used...], as: UTF8.self)
        }
        guard let statement else {
            throw StorageError.syntax(.init("the statement to stream is empty", driver: "sqlite"))
        }
        do {
            guard rest.allSatisfy({ $0.isWhitespace || $0 == ";" }) else {
                throw StorageError.syntax(.init("a stream runs one statement; more follow it", driver: "sqlite"))
            }
            let count = Int(sqlite3_bind_parameter_count(statement))
            guard count == parameters.count else {
                throw StorageError.syntax(.init(
                    "the statement has \(count) placeholders but \(parameters.count) parameters were given",
                    driver: "sqlite"))
            }
            for (i, parameter) in parameters.enumerated() { try bind(parameter, at: Int32(i + 1), in: statement) }
            return try SQLiteStream(connection: self, statement: statement)
        } catch {
            sqlite3_finalize(statement)
            throw error
        }
    }

    func makeCanceller() -> (any DriverCanceller)? {
        db.map { SQLiteCanceller(db: $0) }
    }

    /// The changes of the last statement (for a stream that returns no rows).
    fileprivate var changes: Int64 { db.map { Int64(sqlite3_changes($0)) } ?? 0 }

    func ping() -> Bool {
        guard let db else { return false }
        return sqlite3_exec(db, "SELECT 1", nil, nil, nil) == SQLITE_OK
    }

    func close() {
        sqlite3_close_v2(db)
        db = nil
    }

    deinit { sqlite3_close_v2(db) }

    fileprivate func bind(_ value: SQLValue, at index: Int32, in statement: OpaquePointer) throws {
        let rc: Int32
        switch value {
        case .null:
            rc = sqlite3_bind_null(statement, index)
        case .integer(let v):
            rc = sqlite3_bind_int64(statement, index, v)
        case .double(let v):
            rc = sqlite3_bind_double(statement, index, v)
        case .text(let text):
            let count = text.utf8.count
            rc = text.withCString { pointer in
                sqlite3_bind_text64(statement, index, pointer, sqlite3_uint64(count), SQLITE_TRANSIENT, UInt8(SQLITE_UTF8))
            }
        case .blob(let bytes):
            if bytes.isEmpty {
                rc = sqlite3_bind_zeroblob(statement, index, 0)
            } else {
                rc = bytes.withUnsafeBytes { raw in
                    sqlite3_bind_blob64(statement, index, raw.baseAddress, sqlite3_uint64(raw.count), SQLITE_TRANSIENT)
                }
            }
        }
        guard rc == SQLITE_OK else { throw error(rc, preparing: false) }
    }

    /// The values of the current row.
    fileprivate func values(of statement: OpaquePointer, count: Int) -> [SQLValue] {
        var values: [SQLValue] = []
        values.reserveCapacity(count)
        for c in 0..<Int32(count) {
            values.append(column(c, of: statement))
        }
        return values
    }

    /// The names and types of a statement's columns: the declared type's affinity where a column has one, else the
    /// storage class of its first value.
    fileprivate static func columns(of statement: OpaquePointer, firstRow: [SQLValue]?) -> SQLColumns {
        let count = Int(sqlite3_column_count(statement))
        var names: [String] = []
        var types: [SQLColumnType] = []
        for c in 0..<count {
            names.append(String(cString: sqlite3_column_name(statement, Int32(c))))
            let declared = sqlite3_column_decltype(statement, Int32(c)).map { String(cString: $0).uppercased() }
            if let declared, let type = declaredType(declared) {
                types.append(type)
            } else {
                switch firstRow?[c] {
                case .integer: types.append(.integer)
                case .double: types.append(.double)
                case .text: types.append(.text)
                case .blob: types.append(.blob)
                case .null, nil: types.append(.unknown)
                }
            }
        }
        return SQLColumns(names, types: types)
    }

    /// SQLite's affinity rules (section 3.1 of "Datatypes In SQLite"), for the affinities that fix a type.
    private static func declaredType(_ declared: String) -> SQLColumnType? {
        if declared.contains("INT") { return .integer }
        if declared.contains("CHAR") || declared.contains("CLOB") || declared.contains("TEXT") { return .text }
        if declared.contains("BLOB") { return .blob }
        if declared.contains("REAL") || declared.contains("FLOA") || declared.contains("DOUB") { return .double }
        return nil  // NUMERIC affinity (DECIMAL, BOOLEAN, DATE) or none: the values decide
    }

    private func column(_ index: Int32, of statement: OpaquePointer) -> SQLValue {
        switch sqlite3_column_type(statement, index) {
        case SQLITE_INTEGER:
            return .integer(sqlite3_column_int64(statement, index))
        case SQLITE_FLOAT:
            return .double(sqlite3_column_double(statement, index))
        case SQLITE_TEXT:
            guard let text = sqlite3_column_text(statement, index) else { return .text("") }
            let count = Int(sqlite3_column_bytes(statement, index))
            return .text(String(decoding: UnsafeBufferPointer(start: text, count: count), as: UTF8.self))
        case SQLITE_BLOB:
            let count = Int(sqlite3_column_bytes(statement, index))
            guard count > 0, let blob = sqlite3_column_blob(statement, index) else { return .blob([]) }
            return .blob(Array(UnsafeRawBufferPointer(start: blob, count: count)))
        default:
            return .null
        }
    }

    /// Maps a SQLite result code to a ``StorageError`` with the connection's message.
    fileprivate func error(_ rc: Int32, preparing: Bool) -> StorageError {
        let extended = db.map { sqlite3_extended_errcode($0) } ?? rc
        let message = db.map { String(cString: sqlite3_errmsg($0)) } ?? String(cString: sqlite3_errstr(rc))
        let detail = StorageError.Detail(message, code: String(extended), driver: "sqlite")
        switch rc & 0xff {
        case SQLITE_CONSTRAINT: return .constraintViolation(detail)
        case SQLITE_ERROR where preparing: return .syntax(detail)
        case SQLITE_MISMATCH: return .constraintViolation(detail)
        case SQLITE_NOTADB, SQLITE_CANTOPEN, SQLITE_CORRUPT: return .connectionLost(detail)
        case SQLITE_INTERRUPT: return .timeout(detail)
        default: return .other(detail)
        }
    }
}

/// SQLite's `SQLITE_TRANSIENT` (the C macro `(sqlite3_destructor_type)-1`): SQLite copies the bound bytes.
private let SQLITE_TRANSIENT = unsafeBitCast(-1, to: sqlite3_destructor_type.self)

/// Interrupts the statement running on one SQLite connection (`sqlite3_interrupt`).
///
/// `@unchecked Sendable`: `sqlite3_interrupt` may be called from any thread while the connection is open, and
/// ``StatementGuard`` calls it only while a statement of the connection runs (so the handle is open).
private final class SQLiteCanceller: DriverCanceller, @unchecked Sendable {
    private let db: OpaquePointer
    init(db: OpaquePointer) { self.db = db }
    func cancel() -> Bool {
        sqlite3_interrupt(db)
        return true
    }

    func abort() {}  // an interrupt always arrives
}

/// A prepared statement stepped one row at a time as batches are asked for. The first row is read at the start
/// (to learn the column types of expressions).
final class SQLiteStream: DriverStream {
    private let connection: SQLiteConnection
    private var statement: OpaquePointer?
    let columns: SQLColumns
    private(set) var rowsFetched = 0
    private(set) var affectedRows: Int64 = 0
    private(set) var isFinished = false
    private let columnCount: Int
    private var lookahead: [SQLValue]?

    /// Takes over a prepared, bound statement and reads its first row. Throws on failure (the statement is then
    /// the caller's to finalize).
    init(connection: SQLiteConnection, statement: OpaquePointer) throws {
        self.connection = connection
        self.statement = statement
        columnCount = Int(sqlite3_column_count(statement))
        let step = sqlite3_step(statement)
        switch step {
        case SQLITE_ROW:
            lookahead = connection.values(of: statement, count: columnCount)
            rowsFetched = 1
        case SQLITE_DONE:
            isFinished = true
            affectedRows = connection.changes
        default:
            self.statement = nil  // the caller finalizes it
            throw connection.error(step, preparing: false)
        }
        columns = SQLiteConnection.columns(of: statement, firstRow: lookahead)
    }

    deinit { sqlite3_finalize(statement) }

    func fetch(_ limit: Int) throws -> [SQLRow] {
        try fetchRows(limit, columns, lookahead: &lookahead, next: nextRow)
    }

    /// Steps to the next row; nil at the end.
    private func nextRow() throws -> [SQLValue]? {
        guard let statement, !isFinished else {
            isFinished = true
            return nil
        }
        let step = sqlite3_step(statement)
        if step == SQLITE_DONE {
            isFinished = true
            return nil
        }
        guard step == SQLITE_ROW else {
            isFinished = true
            throw connection.error(step, preparing: false)
        }
        rowsFetched += 1
        return connection.values(of: statement, count: columnCount)
    }

    func close() {
        sqlite3_finalize(statement)
        statement = nil
        lookahead = nil
        isFinished = true
    }
}
