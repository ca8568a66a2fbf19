#if MySQL
import CMariaDB
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
        return MySQLConnection(mysql: mysql)
    }

    func shutdown() {}
}

/// One libmariadb connection (`MYSQL*`), used by one thread at a time. Every statement is prepared, so values
/// travel in the binary protocol and are never spliced into SQL text.
final class MySQLConnection: DriverConnection {
    private var mysql: UnsafeMutablePointer<MYSQL>?

    init(mysql: UnsafeMutablePointer<MYSQL>) {
        self.mysql = mysql
    }

    deinit {
        closeStatements()
        if let mysql { mysql_close(mysql) }
    }

    /// How a result column is fetched.
    private enum ColumnKind {
        case integer(unsigned: Bool)
        case double
        case text
        case blob
        case null
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
        guard let stmt = mysql_stmt_init(mysql) else { throw connectionError(mysql) }
        let utf8 = Array(sql.utf8)
        let prepared = utf8.withUnsafeBufferPointer { buffer in
            buffer.withMemoryRebound(to: CChar.self) { mysql_stmt_prepare(stmt, $0.baseAddress, UInt(buffer.count)) }
        }
        guard prepared == 0 else {
            let error = statementError(stmt)
            mysql_stmt_close(stmt)
            throw error
        }
        if statementOrder.count >= statementCacheSize {
            let oldest = statementOrder.removeFirst()
            if let old = statements.removeValue(forKey: oldest) { mysql_stmt_close(old) }
        }
        statements[sql] = stmt
        statementOrder.append(sql)
        return stmt
    }

    private func closeStatements() {
        for stmt in statements.values { mysql_stmt_close(stmt) }
        statements.removeAll()
        statementOrder.removeAll()
    }

    private func execute(_ stmt: UnsafeMutablePointer<MYSQL_STMT>, _ parameters: [SQLValue]) throws -> SQLResult {
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
        for (i, parameter) in parameters.enumerated() {
            switch parameter {
            case .null:
                binds[i].buffer_type = MYSQL_TYPE_NULL
            case .integer(let v):
                let buffer = UnsafeMutableRawPointer.allocate(byteCount: 8, alignment: 8)
                buffer.storeBytes(of: v, as: Int64.self)
                buffers.append(buffer)
                binds[i].buffer_type = MYSQL_TYPE_LONGLONG
                binds[i].buffer = buffer
            case .double(let v):
                let buffer = UnsafeMutableRawPointer.allocate(byteCount: 8, alignment: 8)
                buffer.storeBytes(of: v, as: Double.self)
                buffers.append(buffer)
                binds[i].buffer_type = MYSQL_TYPE_DOUBLE
                binds[i].buffer = buffer
            case .text(let s):
                let buffer = Self.copy(Array(s.utf8))
                buffers.append(buffer.pointer)
                binds[i].buffer_type = MYSQL_TYPE_STRING
                binds[i].buffer = buffer.pointer
                binds[i].buffer_length = UInt(buffer.count)
            case .blob(let bytes):
                let buffer = Self.copy(bytes)
                buffers.append(buffer.pointer)
                binds[i].buffer_type = MYSQL_TYPE_BLOB
                binds[i].buffer = buffer.pointer
                binds[i].buffer_length = UInt(buffer.count)
            }
        }
        if count > 0 {
            guard mysql_stmt_bind_param(stmt, binds) == 0 else { throw statementError(stmt) }
        }
        guard mysql_stmt_execute(stmt) == 0 else { throw statementError(stmt) }

        guard let metadata = mysql_stmt_result_metadata(stmt) else {
            let affected = mysql_stmt_affected_rows(stmt)
            return SQLResult(affectedRows: affected == UInt64.max ? 0 : Int64(clamping: affected),
                             lastInsertID: Int64(clamping: mysql_stmt_insert_id(stmt)))
        }
        defer { mysql_free_result(metadata) }
        return try fetchRows(stmt, metadata: metadata)
    }

    private func fetchRows(_ stmt: UnsafeMutablePointer<MYSQL_STMT>, metadata: UnsafeMutablePointer<MYSQL_RES>) throws
        -> SQLResult
    {
        guard mysql_stmt_store_result(stmt) == 0 else { throw statementError(stmt) }
        let fieldCount = Int(mysql_num_fields(metadata))
        let fields = mysql_fetch_fields(metadata)!
        var names: [String] = []
        var kinds: [ColumnKind] = []
        for i in 0..<fieldCount {
            let field = fields[i]
            names.append(String(cString: field.name))
            kinds.append(Self.kind(of: field))
        }
        let columns = SQLColumns(names)

        // Result buffers: 8 bytes for numbers, a small inline buffer for strings (longer values are fetched with
        // mysql_stmt_fetch_column at their real length).
        let inlineCapacity = 256
        let binds = UnsafeMutablePointer<MYSQL_BIND>.allocate(capacity: max(1, fieldCount))
        binds.initialize(repeating: MYSQL_BIND(), count: max(1, fieldCount))
        let lengths = UnsafeMutablePointer<UInt>.allocate(capacity: max(1, fieldCount))
        lengths.initialize(repeating: 0, count: max(1, fieldCount))
        let nulls = UnsafeMutablePointer<my_bool>.allocate(capacity: max(1, fieldCount))
        nulls.initialize(repeating: 0, count: max(1, fieldCount))
        let errors = UnsafeMutablePointer<my_bool>.allocate(capacity: max(1, fieldCount))
        errors.initialize(repeating: 0, count: max(1, fieldCount))
        var buffers: [UnsafeMutableRawPointer] = []
        defer {
            binds.deallocate()
            lengths.deallocate()
            nulls.deallocate()
            errors.deallocate()
            buffers.forEach { $0.deallocate() }
        }
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
        guard mysql_stmt_bind_result(stmt, binds) == 0 else { throw statementError(stmt) }

        var rows: [SQLRow] = []
        while true {
            let rc = mysql_stmt_fetch(stmt)
            if rc == MYSQL_NO_DATA { break }
            guard rc == 0 || rc == MYSQL_DATA_TRUNCATED else { throw statementError(stmt) }
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
                                    throw statementError(stmt)
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
            rows.append(SQLRow(columns: columns, values: values))
        }
        return SQLResult(columns: columns, rows: rows, affectedRows: 0, lastInsertID: nil)
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

    private static func kind(of field: MYSQL_FIELD) -> ColumnKind {
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

    private static func copy(_ bytes: [UInt8]) -> (pointer: UnsafeMutableRawPointer, count: Int) {
        let pointer = UnsafeMutableRawPointer.allocate(byteCount: max(1, bytes.count), alignment: 1)
        bytes.withUnsafeBytes { raw in
            if let base = raw.baseAddress { pointer.copyMemory(from: base, byteCount: raw.count) }
        }
        return (pointer, bytes.count)
    }

    private func statementError(_ stmt: UnsafeMutablePointer<MYSQL_STMT>) -> StorageError {
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
        default:
            return .other(detail)
        }
    }
}
#endif
