#if MySQL
import CMariaDB
import Glibc
import SwitchyardCore

/// Initializes libmariadb once, before any connection (mysql_init is not thread-safe the first time).
private let mysqlLibraryInitialized: Bool = {
    mysql_server_init(0, nil, nil) == 0
}()

/// Opens MySQL/MariaDB connections through libmariadb, with utf8mb4 and prepared statements (binary protocol).
final class MySQLConnector: DriverConnector {
    let dialect = SQLDialect.mysql
    private let url: DatabaseURL

    init(url: DatabaseURL) {
        self.url = url
    }

    func connect(timeout: Duration) throws -> DriverConnection {
        _ = mysqlLibraryInitialized
        guard let mysql = mysql_init(nil) else {
            throw StorageError.connectionFailed(.init("mysql_init failed (out of memory)", driver: "mysql"))
        }
        var seconds = UInt32(clamping: max(1, (timeout.millisecondsRoundedUp + 999) / 1000))
        mysql_options(mysql, MYSQL_OPT_CONNECT_TIMEOUT, &seconds)
        mysql_options(mysql, MYSQL_SET_CHARSET_NAME, "utf8mb4")
        var reconnect: my_bool = 0  // the pool reconnects; a silent reconnect would lose session state
        mysql_options(mysql, MYSQL_OPT_RECONNECT, &reconnect)
        let connected = mysql_real_connect(
            mysql, url.host, url.user, url.password, url.database.isEmpty ? nil : url.database,
            // CLIENT_FOUND_ROWS: UPDATE reports matched rows, as SQLite and PostgreSQL do.
            UInt32(url.port), nil, UInt(CLIENT_FOUND_ROWS))
        guard connected != nil else {
            let code = mysql_errno(mysql)
            let message = String(cString: mysql_error(mysql))
            mysql_close(mysql)
            let detail = StorageError.Detail("cannot connect to \(url): \(message)", code: String(code), driver: "mysql")
            switch code {
            case 1044, 1045, 1698: throw StorageError.authenticationFailed(detail)
            default: throw StorageError.connectionFailed(detail)
            }
        }
        return MySQLConnection(mysql: mysql, url: url, connectTimeout: timeout)
    }

    func shutdown() {}
}

/// One libmariadb connection (`MYSQL*`), used by one thread at a time. Every statement is prepared, so values
/// travel in the binary protocol and are never spliced into SQL text.
final class MySQLConnection: DriverConnection {
    private var mysql: UnsafeMutablePointer<MYSQL>?
    private let url: DatabaseURL
    private let connectTimeout: Duration

    init(mysql: UnsafeMutablePointer<MYSQL>, url: DatabaseURL, connectTimeout: Duration) {
        self.mysql = mysql
        self.url = url
        self.connectTimeout = connectTimeout
    }

    func makeCanceller() -> (any DriverCanceller)? {
        guard let mysql else { return nil }
        return MySQLCanceller(url: url, threadID: UInt64(mysql_thread_id(mysql)),
                              socket: Int32(mysql_get_socket(mysql)), connectTimeout: connectTimeout)
    }

    func stream(_ sql: String, _ parameters: [SQLValue]) throws -> DriverStream {
        guard let mysql else { throw StorageError.connectionLost(.init("the MySQL connection is closed")) }
        // A statement of its own (not the cache's): its unbuffered result lives as long as the stream.
        let stmt = try prepare(sql, mysql)
        do {
            try bindAndExecute(stmt, parameters)
            guard let metadata = mysql_stmt_result_metadata(stmt) else {
                let affected = mysql_stmt_affected_rows(stmt)
                return MySQLStream(statement: stmt, reader: nil,
                                   affectedRows: affected == UInt64.max ? 0 : Int64(clamping: affected))
            }
            let reader = try Self.reader(stmt, metadata)
            return MySQLStream(statement: stmt, reader: reader, affectedRows: 0)
        } catch {
            mysql_stmt_close(stmt)
            throw error
        }
    }

    deinit {
        closeStatements()
        if let mysql { mysql_close(mysql) }
    }

    /// How a result column is fetched.
    fileprivate enum ColumnKind {
        case integer(unsigned: Bool)
        case double
        case text
        case blob
        case null

        var columnType: SQLColumnType {
            switch self {
            case .integer: return .integer
            case .double: return .double
            case .text: return .text
            case .blob: return .blob
            case .null: return .unknown
            }
        }
    }

    func execute(_ sql: String, _ parameters: [SQLValue]) throws -> SQLResult {
        guard let mysql else { throw StorageError.connectionLost(.init("the MySQL connection is closed")) }
        let stmt = try preparedStatement(sql, mysql)
        do {
            let result = try execute(stmt, parameters)
            mysql_stmt_free_result(stmt)
            return result
        } catch {
            // The statement may be in any state now: forget it.
            statements.removeValue(forKey: sql)
            statementOrder.removeAll { $0 == sql }
            mysql_stmt_close(stmt)
            throw error
        }
    }

    /// Prepared statements by SQL text, so that a repeated statement costs one round trip (execute) instead of
    /// three (prepare, execute, close). At most ``statementCacheSize``; the oldest is closed first.
    private var statements: [String: UnsafeMutablePointer<MYSQL_STMT>] = [:]
    private var statementOrder: [String] = []
    private let statementCacheSize = 64

    private func preparedStatement(_ sql: String, _ mysql: UnsafeMutablePointer<MYSQL>) throws
        -> UnsafeMutablePointer<MYSQL_STMT>
    {
        if let stmt = statements[sql] { return stmt }
        let stmt = try prepare(sql, mysql)
        if statementOrder.count >= statementCacheSize {
            let oldest = statementOrder.removeFirst()
            if let old = statements.removeValue(forKey: oldest) { mysql_stmt_close(old) }
        }
        statements[sql] = stmt
        statementOrder.append(sql)
        return stmt
    }

    /// Prepares a new statement (the caller closes it).
    private func prepare(_ sql: String, _ mysql: UnsafeMutablePointer<MYSQL>) throws
        -> UnsafeMutablePointer<MYSQL_STMT>
    {
        guard let stmt = mysql_stmt_init(mysql) else { throw connectionError(mysql) }
        let utf8 = Array(sql.utf8)
        let prepared = utf8.withUnsafeBufferPointer { buffer in
            buffer.withMemoryRebound(to: CChar.self) { mysql_stmt_prepare(stmt, $0.baseAddress, UInt(buffer.count)) }
        }
        guard prepared == 0 else {
            let error = Self.statementError(stmt)
            mysql_stmt_close(stmt)
            throw error
        }
        return stmt
    }

    private func closeStatements() {
        for stmt in statements.values { mysql_stmt_close(stmt) }
        statements.removeAll()
        statementOrder.removeAll()
    }

    private func execute(_ stmt: UnsafeMutablePointer<MYSQL_STMT>, _ parameters: [SQLValue]) throws -> SQLResult {
        try bindAndExecute(stmt, parameters)
        guard let metadata = mysql_stmt_result_metadata(stmt) else {
            let affected = mysql_stmt_affected_rows(stmt)
            return SQLResult(affectedRows: affected == UInt64.max ? 0 : Int64(clamping: affected),
                             lastInsertID: Int64(clamping: mysql_stmt_insert_id(stmt)))
        }
        let reader = try Self.reader(stmt, metadata)
        guard mysql_stmt_store_result(stmt) == 0 else { throw Self.statementError(stmt) }
        var rows: [SQLRow] = []
        while let values = try reader.readRow() {
            rows.append(SQLRow(columns: reader.columns, values: values))
        }
        return SQLResult(columns: reader.columns, rows: rows, affectedRows: 0, lastInsertID: nil)
    }

    /// Binds the parameters and executes the statement.
    private func bindAndExecute(_ stmt: UnsafeMutablePointer<MYSQL_STMT>, _ parameters: [SQLValue]) throws {
        let count = Int(mysql_stmt_param_count(stmt))
        guard count == parameters.count else {
            throw StorageError.syntax(.init(
                "the statement has \(count) placeholders but \(parameters.count) parameters were given", driver: "mysql"))
        }

        // Parameters: MYSQL_BIND array plus buffers that live until execute returns.
        let binds = UnsafeMutablePointer<MYSQL_BIND>.allocate(capacity: max(1, count))
        binds.initialize(repeating: MYSQL_BIND(), count: max(1, count))
        var buffers: [UnsafeMutableRawPointer] = []
        defer {
            binds.deallocate()
            buffers.forEach { $0.deallocate() }
        }
        /// Binds parameter `i` to a copy of `bytes`, which lives until execute returns.
        func bind(_ i: Int, _ type: enum_field_types, _ bytes: UnsafeRawBufferPointer) {
            let buffer = UnsafeMutableRawPointer.allocate(byteCount: max(1, bytes.count), alignment: 8)
            if let base = bytes.baseAddress { buffer.copyMemory(from: base, byteCount: bytes.count) }
            buffers.append(buffer)
            binds[i].buffer_type = type
            binds[i].buffer = buffer
            binds[i].buffer_length = UInt(bytes.count)
        }
        for (i, parameter) in parameters.enumerated() {
            switch parameter {
            case .null: binds[i].buffer_type = MYSQL_TYPE_NULL
            case .integer(let v): withUnsafeBytes(of: v) { bind(i, MYSQL_TYPE_LONGLONG, $0) }
            case .double(let v): withUnsafeBytes(of: v) { bind(i, MYSQL_TYPE_DOUBLE, $0) }
            case .text(let s): Array(s.utf8).withUnsafeBytes { bind(i, MYSQL_TYPE_STRING, $0) }
            case .blob(let bytes): bytes.withUnsafeBytes { bind(i, MYSQL_TYPE_BLOB, $0) }
            }
        }
        if count > 0 {
            guard mysql_stmt_bind_param(stmt, binds) == 0 else { throw Self.statementError(stmt) }
        }
        guard mysql_stmt_execute(stmt) == 0 else { throw Self.statementError(stmt) }
    }

    /// Reads the rows of an executed statement into bound result buffers: 8 bytes for numbers, a small inline
    /// buffer for strings (longer values are fetched with mysql_stmt_fetch_column at their real length). Works on
    /// a stored result and on an unbuffered one (a stream).
    fileprivate final class ResultReader {
        let columns: SQLColumns
        private let stmt: UnsafeMutablePointer<MYSQL_STMT>
        private let metadata: UnsafeMutablePointer<MYSQL_RES>
        private let kinds: [ColumnKind]
        private let fieldCount: Int
        private let binds: UnsafeMutablePointer<MYSQL_BIND>
        private let lengths: UnsafeMutablePointer<UInt>
        private let nulls: UnsafeMutablePointer<my_bool>
        private let errors: UnsafeMutablePointer<my_bool>
        private var buffers: [UnsafeMutableRawPointer] = []
        private let inlineCapacity = 256

        /// Takes over `metadata` (freed in deinit) and binds the result buffers.
        init(_ stmt: UnsafeMutablePointer<MYSQL_STMT>, metadata: UnsafeMutablePointer<MYSQL_RES>) throws {
            self.stmt = stmt
            self.metadata = metadata
            let fieldCount = Int(mysql_num_fields(metadata))
            self.fieldCount = fieldCount
            let fields = mysql_fetch_fields(metadata)!
            var names: [String] = []
            var kinds: [ColumnKind] = []
            for i in 0..<fieldCount {
                let field = fields[i]
                names.append(String(cString: field.name))
                kinds.append(MySQLConnection.kind(of: field))
            }
            self.kinds = kinds
            columns = SQLColumns(names, types: kinds.map(\.columnType))
            binds = .allocate(capacity: max(1, fieldCount))
            binds.initialize(repeating: MYSQL_BIND(), count: max(1, fieldCount))
            lengths = .allocate(capacity: max(1, fieldCount))
            lengths.initialize(repeating: 0, count: max(1, fieldCount))
            nulls = .allocate(capacity: max(1, fieldCount))
            nulls.initialize(repeating: 0, count: max(1, fieldCount))
            errors = .allocate(capacity: max(1, fieldCount))
            errors.initialize(repeating: 0, count: max(1, fieldCount))
            try bind()
        }

        deinit {
            binds.deallocate()
            lengths.deallocate()
            nulls.deallocate()
            errors.deallocate()
            buffers.forEach { $0.deallocate() }
            mysql_free_result(metadata)
        }

        private func bind() throws {
            for i in 0..<fieldCount {
                binds[i].length = lengths + i
                binds[i].is_null = nulls + i
                binds[i].error = errors + i
                let size: Int
                switch kinds[i] {
                case .integer(let unsigned):
                    binds[i].buffer_type = MYSQL_TYPE_LONGLONG
                    binds[i].is_unsigned = unsigned ? 1 : 0
                    size = 8
                case .double:
                    binds[i].buffer_type = MYSQL_TYPE_DOUBLE
                    size = 8
                case .text, .null:
                    binds[i].buffer_type = MYSQL_TYPE_STRING
                    size = inlineCapacity
                case .blob:
                    binds[i].buffer_type = MYSQL_TYPE_BLOB
                    size = inlineCapacity
                }
                let buffer = UnsafeMutableRawPointer.allocate(byteCount: size, alignment: 8)
                buffers.append(buffer)
                binds[i].buffer = buffer
                binds[i].buffer_length = UInt(size)
            }
            guard mysql_stmt_bind_result(stmt, binds) == 0 else { throw MySQLConnection.statementError(stmt) }
        }

        /// The next row, or `nil` at the end.
        func readRow() throws -> [SQLValue]? {
            let rc = mysql_stmt_fetch(stmt)
            if rc == MYSQL_NO_DATA { return nil }
            guard rc == 0 || rc == MYSQL_DATA_TRUNCATED else { throw MySQLConnection.statementError(stmt) }
            var values: [SQLValue] = []
            values.reserveCapacity(fieldCount)
            for i in 0..<fieldCount {
                if nulls[i] != 0 {
                    values.append(.null)
                    continue
                }
                switch kinds[i] {
                case .integer(let unsigned):
                    let raw = buffers[i].load(as: Int64.self)
                    if unsigned && raw < 0 {
                        values.append(.text(String(UInt64(bitPattern: raw))))  // above Int64.max
                    } else {
                        values.append(.integer(raw))
                    }
                case .double:
                    values.append(.double(buffers[i].load(as: Double.self)))
                case .text, .blob, .null:
                    let length = Int(lengths[i])
                    var bytes: [UInt8]
                    if length <= inlineCapacity {
                        bytes = Array(UnsafeRawBufferPointer(start: buffers[i], count: length))
                    } else {
                        bytes = [UInt8](repeating: 0, count: length)
                        try bytes.withUnsafeMutableBytes { raw in
                            var bind = MYSQL_BIND()
                            var fetchedLength: UInt = 0
                            bind.buffer_type = binds[i].buffer_type
                            bind.buffer = raw.baseAddress
                            bind.buffer_length = UInt(length)
                            try withUnsafeMutablePointer(to: &fetchedLength) { lengthPointer in
                                bind.length = lengthPointer
                                guard mysql_stmt_fetch_column(stmt, &bind, UInt32(i), 0) == 0 else {
                                    throw MySQLConnection.statementError(stmt)
                                }
                            }
                        }
                    }
                    if case .blob = kinds[i] {
                        values.append(.blob(bytes))
                    } else {
                        values.append(.text(String(decoding: bytes, as: UTF8.self)))
                    }
                }
            }
            return values
        }
    }

    func ping() -> Bool {
        guard let mysql else { return false }
        return mysql_ping(mysql) == 0
    }

    func close() {
        closeStatements()
        if let mysql { mysql_close(mysql) }
        mysql = nil
    }

    fileprivate static func kind(of field: MYSQL_FIELD) -> ColumnKind {
        let unsigned = field.flags & UInt32(UNSIGNED_FLAG) != 0
        switch field.type {
        case MYSQL_TYPE_TINY, MYSQL_TYPE_SHORT, MYSQL_TYPE_LONG, MYSQL_TYPE_INT24, MYSQL_TYPE_LONGLONG, MYSQL_TYPE_YEAR:
            return .integer(unsigned: unsigned)
        case MYSQL_TYPE_FLOAT, MYSQL_TYPE_DOUBLE:
            return .double
        case MYSQL_TYPE_NULL:
            return .null
        case MYSQL_TYPE_TINY_BLOB, MYSQL_TYPE_MEDIUM_BLOB, MYSQL_TYPE_LONG_BLOB, MYSQL_TYPE_BLOB, MYSQL_TYPE_STRING,
            MYSQL_TYPE_VAR_STRING, MYSQL_TYPE_VARCHAR, MYSQL_TYPE_BIT, MYSQL_TYPE_GEOMETRY:
            // charset 63 is "binary": BLOB, BINARY, VARBINARY (and BIT).
            return field.charsetnr == 63 ? .blob : .text
        default:
            return .text  // DECIMAL, dates and times, JSON, ENUM, SET: the server's text form
        }
    }

    /// A reader of `stmt`'s result; `metadata` is freed when none can be made (the reader owns it otherwise).
    private static func reader(_ stmt: UnsafeMutablePointer<MYSQL_STMT>, _ metadata: UnsafeMutablePointer<MYSQL_RES>)
        throws -> ResultReader
    {
        do {
            return try ResultReader(stmt, metadata: metadata)
        } catch {
            mysql_free_result(metadata)
            throw error
        }
    }

    fileprivate static func statementError(_ stmt: UnsafeMutablePointer<MYSQL_STMT>) -> StorageError {
        Self.classify(code: mysql_stmt_errno(stmt), message: String(cString: mysql_stmt_error(stmt)))
    }

    private func connectionError(_ mysql: UnsafeMutablePointer<MYSQL>) -> StorageError {
        Self.classify(code: mysql_errno(mysql), message: String(cString: mysql_error(mysql)))
    }

    /// Maps a MySQL/MariaDB error number to a ``StorageError``.
    static func classify(code: UInt32, message: String) -> StorageError {
        let detail = StorageError.Detail(message, code: String(code), driver: "mysql")
        switch code {
        // duplicate key, foreign keys, NOT NULL, no default, CHECK (MySQL 3819, MariaDB 4025)
        case 1062, 1586, 1169, 1451, 1452, 1216, 1217, 1048, 1364, 1557, 3819, 4025:
            return .constraintViolation(detail)
        // out of range, data truncated, incorrect value for the column, data too long, incorrect date/time value
        case 1264, 1265, 1366, 1406, 1292:
            return .valueRejected(detail)
        // parse error, unknown table/column/function, ambiguous column
        case 1064, 1146, 1054, 1149, 1109, 1052, 1051, 1305, 1630:
            return .syntax(detail)
        case 1044, 1045, 1698:
            return .authenticationFailed(detail)
        // server gone away, lost connection, connection killed, server shutdown, idle disconnect
        case 2006, 2013, 2055, 1927, 1053, 4031, 2002, 2003:
            return .connectionLost(detail)
        // query interrupted (KILL QUERY), max_statement_time (MariaDB), max_execution_time (MySQL)
        case 1317, 1969, 3024:
            return .timeout(detail)
        default:
            return .other(detail)
        }
    }
}

/// Cancels the running statement of one MySQL/MariaDB connection: `KILL QUERY <thread id>` sent from a short-lived
/// second connection with the same URL (the statement then fails with 1317, or a killed `SLEEP` returns 1).
private struct MySQLCanceller: DriverCanceller {
    let url: DatabaseURL
    let threadID: UInt64
    /// The statement's connection's socket, for ``abort()``.
    let socket: Int32
    let connectTimeout: Duration

    func cancel() -> Bool {
        _ = mysqlLibraryInitialized
        guard let mysql = mysql_init(nil) else { return false }
        defer { mysql_close(mysql) }
        var seconds = UInt32(clamping: max(1, (connectTimeout.millisecondsRoundedUp + 999) / 1000))
        mysql_options(mysql, MYSQL_OPT_CONNECT_TIMEOUT, &seconds)
        mysql_options(mysql, MYSQL_OPT_READ_TIMEOUT, &seconds)
        mysql_options(mysql, MYSQL_OPT_WRITE_TIMEOUT, &seconds)
        guard mysql_real_connect(mysql, url.host, url.user, url.password, nil, UInt32(url.port), nil, 0) != nil else {
            return false
        }
        // 1094: no such thread (the statement's connection is gone): nothing is left to cancel.
        return mysql_query(mysql, "KILL QUERY \(threadID)") == 0 || mysql_errno(mysql) == 1094
    }

    func abort() {
        if socket >= 0 { _ = Glibc.shutdown(socket, Int32(SHUT_RDWR)) }
    }
}

/// A statement whose result is read unbuffered: `mysql_stmt_fetch` a row as batches are asked for, without
/// `mysql_stmt_store_result`, so the server waits on the network while the caller is busy.
final class MySQLStream: DriverStream {
    private var stmt: UnsafeMutablePointer<MYSQL_STMT>?
    private var reader: MySQLConnection.ResultReader?
    let columns: SQLColumns
    let affectedRows: Int64
    private(set) var rowsFetched = 0
    private(set) var isFinished: Bool

    fileprivate init(statement: UnsafeMutablePointer<MYSQL_STMT>, reader: MySQLConnection.ResultReader?,
                     affectedRows: Int64) {
        stmt = statement
        self.reader = reader
        self.affectedRows = affectedRows
        columns = reader?.columns ?? SQLColumns([])
        isFinished = reader == nil
    }

    deinit { close() }

    func fetch(_ limit: Int) throws -> [SQLRow] {
        var rows: [SQLRow] = []
        guard let reader, !isFinished else { return rows }
        rows.reserveCapacity(min(limit, 4096))
        do {
            while rows.count < limit {
                guard let values = try reader.readRow() else {
                    isFinished = true
                    break
                }
                rowsFetched += 1
                rows.append(SQLRow(columns: columns, values: values))
            }
        } catch {
            isFinished = true
            throw error
        }
        return rows
    }

    func close() {
        guard let stmt else { return }
        if !isFinished, let reader {
            // Read what is left (a cancel sent before makes it short), so the connection is in sync again.
            while (try? reader.readRow()) != nil {}
        }
        isFinished = true
        reader = nil
        mysql_stmt_close(stmt)
        self.stmt = nil
    }
}
#endif
