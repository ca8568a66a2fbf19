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
                if columnCount > 0 {
                    columns = SQLColumns((0..<columnCount).map { String(cString: sqlite3_column_name(statement, Int32($0))) })
                    result.columns = columns
                    result.rows = []
                }
                while true {
                    let step = sqlite3_step(statement)
                    if step == SQLITE_DONE { break }
                    guard step == SQLITE_ROW else { throw error(step, preparing: false) }
                    var values: [SQLValue] = []
                    values.reserveCapacity(columnCount)
                    for c in 0..<Int32(columnCount) {
                        values.append(column(c, of: statement))
                    }
                    result.rows.append(SQLRow(columns: columns, values: values))
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

    func ping() -> Bool {
        guard let db else { return false }
        return sqlite3_exec(db, "SELECT 1", nil, nil, nil) == SQLITE_OK
    }

    func close() {
        sqlite3_close_v2(db)
        db = nil
    }

    deinit { sqlite3_close_v2(db) }

    private func bind(_ value: SQLValue, at index: Int32, in statement: OpaquePointer) throws {
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
    private func error(_ rc: Int32, preparing: Bool) -> StorageError {
        let extended = db.map { sqlite3_extended_errcode($0) } ?? rc
        let message = db.map { String(cString: sqlite3_errmsg($0)) } ?? String(cString: sqlite3_errstr(rc))
        let detail = StorageError.Detail(message, code: String(extended), driver: "sqlite")
        switch rc & 0xff {
        case SQLITE_CONSTRAINT: return .constraintViolation(detail)
        case SQLITE_ERROR where preparing: return .syntax(detail)
        case SQLITE_MISMATCH: return .constraintViolation(detail)
        case SQLITE_NOTADB, SQLITE_CANTOPEN, SQLITE_CORRUPT: return .connectionLost(detail)
        default: return .other(detail)
        }
    }
}

/// SQLite's `SQLITE_TRANSIENT` (the C macro `(sqlite3_destructor_type)-1`): SQLite copies the bound bytes.
private let SQLITE_TRANSIENT = unsafeBitCast(-1, to: sqlite3_destructor_type.self)
