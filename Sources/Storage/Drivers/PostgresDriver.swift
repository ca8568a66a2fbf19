#if PostgreSQL
import CLibPQ
import Glibc
import SwitchyardCore

/// Opens PostgreSQL connections through libpq. URL query items are passed to libpq as connection keywords
/// (`sslmode`, `application_name`, ...); `connect_timeout` comes from the pool (at least 2 s, libpq's minimum).
final class PostgresConnector: DriverConnector {
    let dialect = SQLDialect.postgres
    private let url: DatabaseURL

    init(url: DatabaseURL) {
        self.url = url
    }

    func connect(timeout: Duration) throws -> DriverConnection {
        var parameters: [(String, String)] = [
            ("host", url.host), ("port", String(url.port)), ("user", url.user), ("password", url.password),
            ("dbname", url.database.isEmpty ? url.user : url.database),
            ("connect_timeout", String(max(2, (timeout.millisecondsRoundedUp + 999) / 1000))),
            ("client_encoding", "UTF8"), ("application_name", "switchyard"),
            ("keepalives", "1"), ("keepalives_idle", "30"), ("keepalives_interval", "10"), ("keepalives_count", "3"),
        ]
        for (key, value) in url.options.sorted(by: { $0.key < $1.key }) {
            parameters.removeAll { $0.0 == key }
            parameters.append((key, value))
        }
        let keywords: [UnsafeMutablePointer<CChar>?] = parameters.map { PostgresConnection.copyCString($0.0) } + [nil]
        let values: [UnsafeMutablePointer<CChar>?] = parameters.map { PostgresConnection.copyCString($0.1) } + [nil]
        defer {
            keywords.forEach { $0?.deallocate() }
            values.forEach { $0?.deallocate() }
        }
        let conn = keywords.map { $0.map { UnsafePointer($0) } }.withUnsafeBufferPointer { k in
            values.map { $0.map { UnsafePointer($0) } }.withUnsafeBufferPointer { v in
                PQconnectdbParams(k.baseAddress, v.baseAddress, 0)
            }
        }
        guard let conn else {
            throw StorageError.connectionFailed(.init("libpq could not allocate a connection", driver: "postgres"))
        }
        guard PQstatus(conn) == CONNECTION_OK else {
            let message = PostgresConnection.trimmed(PQerrorMessage(conn))
            PQfinish(conn)
            let detail = StorageError.Detail("cannot connect to \(url): \(message)", driver: "postgres")
            if message.contains("password authentication failed") || message.contains("no password supplied")
                || message.contains("authentication failed")
            {
                throw StorageError.authenticationFailed(detail)
            }
            throw StorageError.connectionFailed(detail)
        }
        // Notices ("table does not exist, skipping") would go to stderr; drop them.
        PQsetNoticeProcessor(conn, { _, _ in }, nil)
        return PostgresConnection(conn: conn)
    }

    func shutdown() {}
}

/// One libpq connection (`PGconn*`), used by one thread at a time.
///
/// Parameters are sent with types: integers as `int8`, doubles as `float8`, blobs as `bytea` (binary), text and
/// NULL as "unknown" so the server infers the column's type (timestamps, JSON, ...). A consequence: a text or NULL
/// parameter whose type nothing determines (`SELECT ? IS NULL`) fails with "could not determine data type";
/// write `CAST(? AS TEXT)` there.
final class PostgresConnection: DriverConnection {
    private(set) var conn: OpaquePointer?

    /// A duplicate of the socket for an event loop to watch (``PostgresLoopStatement``): libpq closes its own
    /// descriptor when the connection drops, which may happen under a watch, and its number may then be reused; the
    /// duplicate keeps the socket's number ours until the connection is closed. Made on first use (-1 before).
    private var loopSocket: Int32 = -1

    init(conn: OpaquePointer) {
        self.conn = conn
    }

    deinit {
        if let conn { PQfinish(conn) }
        if loopSocket >= 0 { Glibc.close(loopSocket) }
    }

    /// The socket for a loop to watch (a duplicate, see ``loopSocket``), or -1 when the connection has none.
    func socketForLoop() -> Int32 {
        if loopSocket < 0, let conn {
            let fd = PQsocket(conn)
            if fd >= 0 { loopSocket = fcntl(fd, F_DUPFD_CLOEXEC, 0) }
        }
        return loopSocket
    }

    private enum OID {
        static let bool: UInt32 = 16
        static let bytea: UInt32 = 17
        static let int8: UInt32 = 20
        static let int2: UInt32 = 21
        static let int4: UInt32 = 23
        static let oid: UInt32 = 26
        static let float4: UInt32 = 700
        static let float8: UInt32 = 701
    }

    func execute(_ sql: String, _ parameters: [SQLValue]) throws -> SQLResult {
        guard let conn else { throw StorageError.connectionLost(.init("the PostgreSQL connection is closed")) }
        let result = try withParameters(sql, parameters) { text, count, types, values, lengths, formats in
            PQexecParams(conn, text, count, types, values, lengths, formats, 0)
        }
        guard let result else { throw error(nil) }
        defer { PQclear(result) }
        switch PQresultStatus(result) {
        case PGRES_COMMAND_OK, PGRES_EMPTY_QUERY:
            return SQLResult(affectedRows: Self.affectedRows(result))
        case PGRES_TUPLES_OK:
            return decodeRows(result)
        default:
            throw error(result)
        }
    }

    func stream(_ sql: String, _ parameters: [SQLValue]) throws -> DriverStream {
        guard let conn else { throw StorageError.connectionLost(.init("the PostgreSQL connection is closed")) }
        let sent = try withParameters(sql, parameters) { text, count, types, values, lengths, formats in
            PQsendQueryParams(conn, text, count, types, values, lengths, formats, 0)
        }
        guard sent == 1 else { throw error(nil) }
        guard PQsetSingleRowMode(conn) == 1 else {
            drain()
            throw StorageError.other(.init("libpq refused single-row mode", driver: "postgres"))
        }
        return try PostgresStream(connection: self)
    }

    func makeCanceller() -> (any DriverCanceller)? {
        guard let conn, let cancel = PQgetCancel(conn) else { return nil }
        return PostgresCanceller(cancel, socket: PQsocket(conn))
    }

    /// The connection's next result, or `nil` when the statement is over (stream use).
    fileprivate func nextResult() -> OpaquePointer? {
        conn.flatMap { PQgetResult($0) }
    }

    /// Reads and drops the rest of the running statement's results.
    fileprivate func drain() {
        while let result = nextResult() { PQclear(result) }
    }

    /// Binds `parameters` as libpq wants them for the duration of `body`.
    func withParameters<R>(
        _ sql: String, _ parameters: [SQLValue],
        _ body: (String, Int32, [UInt32], UnsafePointer<UnsafePointer<CChar>?>?, [Int32], [Int32]) -> R
    ) throws -> R {
        let (text, count) = Placeholders.numbered(sql)
        guard count == parameters.count else {
            throw StorageError.syntax(.init(
                "the statement has \(count) placeholders but \(parameters.count) parameters were given",
                driver: "postgres"))
        }
        var types: [UInt32] = []
        var values: [UnsafeMutablePointer<CChar>?] = []
        var lengths: [Int32] = []
        var formats: [Int32] = []
        defer { values.forEach { $0?.deallocate() } }
        for parameter in parameters {
            switch parameter {
            case .null:
                types.append(0)
                values.append(nil)
                lengths.append(0)
                formats.append(0)
            case .integer(let v):
                types.append(OID.int8)
                values.append(Self.copyCString(String(v)))
                lengths.append(0)
                formats.append(0)
            case .double(let v):
                types.append(OID.float8)
                let text = v.isNaN ? "NaN" : v.isInfinite ? (v < 0 ? "-Infinity" : "Infinity") : "\(v)"
                values.append(Self.copyCString(text))
                lengths.append(0)
                formats.append(0)
            case .text(let s):
                types.append(0)  // unknown: the server infers it (text, timestamp, json, ...)
                values.append(Self.copyCString(s))
                lengths.append(0)
                formats.append(0)
            case .blob(let bytes):
                types.append(OID.bytea)
                let buffer = UnsafeMutablePointer<CChar>.allocate(capacity: max(1, bytes.count))
                bytes.withUnsafeBytes { raw in
                    if let base = raw.baseAddress { UnsafeMutableRawPointer(buffer).copyMemory(from: base, byteCount: raw.count) }
                }
                values.append(buffer)
                lengths.append(Int32(bytes.count))
                formats.append(1)
            }
        }
        return values.map { $0.map { UnsafePointer($0) } }.withUnsafeBufferPointer { valuePointers in
            body(text, Int32(parameters.count), types, valuePointers.baseAddress, lengths, formats)
        }
    }

    func ping() -> Bool {
        guard let conn, PQstatus(conn) == CONNECTION_OK else { return false }
        guard let result = PQexec(conn, "SELECT 1") else { return false }
        defer { PQclear(result) }
        return PQresultStatus(result) == PGRES_TUPLES_OK
    }

    func close() {
        if let conn { PQfinish(conn) }
        conn = nil
        if loopSocket >= 0 { Glibc.close(loopSocket) }
        loopSocket = -1
    }

    private func decodeRows(_ result: OpaquePointer) -> SQLResult {
        let rowCount = PQntuples(result)
        let (columns, types) = Self.columns(of: result)
        var rows: [SQLRow] = []
        rows.reserveCapacity(Int(rowCount))
        for r in 0..<rowCount {
            rows.append(SQLRow(columns: columns, values: Self.values(of: result, row: r, types: types)))
        }
        return SQLResult(columns: columns, rows: rows, affectedRows: Self.affectedRows(result))
    }

    /// The columns of a result (names and types) and the type OIDs.
    static func columns(of result: OpaquePointer) -> (SQLColumns, [UInt32]) {
        let fieldCount = PQnfields(result)
        let oids = (0..<fieldCount).map { PQftype(result, $0) }
        let names = (0..<fieldCount).map { String(cString: PQfname(result, $0)) }
        return (SQLColumns(names, types: oids.map(columnType)), oids)
    }

    /// The column type of a type OID (as ``values(of:row:types:)`` decodes it).
    private static func columnType(_ oid: UInt32) -> SQLColumnType {
        switch oid {
        case OID.int8, OID.int4, OID.int2, OID.oid, OID.bool: return .integer
        case OID.float8, OID.float4: return .double
        case OID.bytea: return .blob
        default: return .text
        }
    }

    /// The values of one row of a result.
    static func values(of result: OpaquePointer, row r: Int32, types: [UInt32]) -> [SQLValue] {
        let fieldCount = PQnfields(result)
        var values: [SQLValue] = []
        values.reserveCapacity(Int(fieldCount))
        for c in 0..<fieldCount {
            if PQgetisnull(result, r, c) != 0 {
                values.append(.null)
                continue
            }
            let pointer = PQgetvalue(result, r, c)!
            let length = Int(PQgetlength(result, r, c))
            let bytes = UnsafeRawBufferPointer(start: pointer, count: length)
            switch types[Int(c)] {
            case OID.int8, OID.int4, OID.int2, OID.oid:
                values.append(Int64(String(decoding: bytes, as: UTF8.self)).map { .integer($0) }
                    ?? .text(String(decoding: bytes, as: UTF8.self)))
            case OID.float8, OID.float4:
                values.append(Double(String(decoding: bytes, as: UTF8.self)).map { .double($0) }
                    ?? .text(String(decoding: bytes, as: UTF8.self)))
            case OID.bool:
                values.append(.integer(length > 0 && bytes[0] == UInt8(ascii: "t") ? 1 : 0))
            case OID.bytea:
                values.append(.blob(Self.decodeHexBytea(bytes)))
            default:
                values.append(.text(String(decoding: bytes, as: UTF8.self)))
            }
        }
        return values
    }

    /// Decodes bytea's text output (`\x` then two hex digits a byte, the default `bytea_output`).
    private static func decodeHexBytea(_ text: UnsafeRawBufferPointer) -> [UInt8] {
        guard text.count >= 2, text[0] == UInt8(ascii: "\\"), text[1] == UInt8(ascii: "x") else {
            return Array(text)  // escape format is not expected; hand back the raw text
        }
        func nibble(_ c: UInt8) -> UInt8 {
            switch c {
            case UInt8(ascii: "0")...UInt8(ascii: "9"): return c - UInt8(ascii: "0")
            case UInt8(ascii: "a")...UInt8(ascii: "f"): return c - UInt8(ascii: "a") + 10
            case UInt8(ascii: "A")...UInt8(ascii: "F"): return c - UInt8(ascii: "A") + 10
            default: return 0
            }
        }
        let count = (text.count - 2) / 2
        return [UInt8](unsafeUninitializedCapacity: count) { buffer, initialized in
            var i = 2
            for k in 0..<count {
                buffer[k] = nibble(text[i]) << 4 | nibble(text[i + 1])
                i += 2
            }
            initialized = count
        }
    }

    static func affectedRows(_ result: OpaquePointer) -> Int64 {
        guard let tuples = PQcmdTuples(result) else { return 0 }
        return Int64(String(cString: tuples)) ?? 0
    }

    static func copyCString(_ s: String) -> UnsafeMutablePointer<CChar> {
        let utf8 = s.utf8CString
        let buffer = UnsafeMutablePointer<CChar>.allocate(capacity: utf8.count)
        utf8.withUnsafeBufferPointer { buffer.initialize(from: $0.baseAddress!, count: utf8.count) }
        return buffer
    }

    static func trimmed(_ message: UnsafePointer<CChar>?) -> String {
        guard let message else { return "unknown error" }
        var text = String(cString: message)
        while text.last?.isWhitespace == true { text.removeLast() }
        return text.isEmpty ? "unknown error" : text
    }

    /// Maps a failed result (or a missing one) to a ``StorageError`` by SQLSTATE class.
    func error(_ result: OpaquePointer?) -> StorageError {
        let message: String
        var sqlstate: String? = nil
        if let result {
            message = Self.trimmed(PQresultErrorMessage(result))
            if let state = PQresultErrorField(result, Int32(UInt8(ascii: "C"))) { sqlstate = String(cString: state) }
        } else {
            message = Self.trimmed(PQerrorMessage(conn))
        }
        let detail = StorageError.Detail(message, code: sqlstate, driver: "postgres")
        if conn == nil || PQstatus(conn) != CONNECTION_OK { return .connectionLost(detail) }
        guard let sqlstate else { return .other(detail) }
        if sqlstate == "57014" { return .timeout(detail) }  // query_canceled: PQcancel, statement_timeout
        switch sqlstate.prefix(2) {
        case "23": return .constraintViolation(detail)
        case "22": return .valueRejected(detail)  // data exception: out of range, too long, invalid text
        case "42": return .syntax(detail)
        case "08": return .connectionLost(detail)
        case "28": return .authenticationFailed(detail)
        case "57" where sqlstate.hasPrefix("57P"): return .connectionLost(detail)
        default: return .other(detail)
        }
    }
}

/// Cancels the running statement of one PostgreSQL connection with `PQcancel` (a separate connection to the
/// server that sends the backend a cancel request).
///
/// `@unchecked Sendable`: libpq documents `PQcancel` as safe from any thread on a `PGcancel` that is not freed
/// meanwhile; this object owns it and frees it in `deinit`, after the last cancel.
private final class PostgresCanceller: DriverCanceller, @unchecked Sendable {
    private let handle: OpaquePointer
    private let socket: Int32

    init(_ handle: OpaquePointer, socket: Int32) {
        self.handle = handle
        self.socket = socket
    }

    deinit { PQfreeCancel(handle) }

    func cancel() -> Bool {
        var message = [CChar](repeating: 0, count: 256)
        return PQcancel(handle, &message, Int32(message.count)) == 1
    }

    func abort() {
        if socket >= 0 { _ = Glibc.shutdown(socket, Int32(SHUT_RDWR)) }
    }
}

/// A statement read in single-row mode: one `PQgetResult` a row, as batches are asked for. The first row (or the
/// end) is read at the start, for the columns.
final class PostgresStream: DriverStream {
    private let connection: PostgresConnection
    private(set) var columns = SQLColumns([])
    private var oids: [UInt32] = []
    private(set) var rowsFetched = 0
    private(set) var affectedRows: Int64 = 0
    private(set) var isFinished = false
    private var lookahead: [SQLValue]?

    /// Reads the first result of a statement just sent. Throws (after draining) when it failed.
    init(connection: PostgresConnection) throws {
        self.connection = connection
        if let row = try readRow() {
            lookahead = row
        }
    }

    /// Goes on with a statement whose first rows a loop read (``PostgresLoopStatement``): the next rows come from
    /// the connection, read in single-row mode with blocking calls.
    init(continuing connection: PostgresConnection, columns: SQLColumns, oids: [UInt32], rowsFetched: Int) {
        self.connection = connection
        self.columns = columns
        self.oids = oids
        self.rowsFetched = rowsFetched
    }

    /// Reads one row; `nil` at the end (then ``isFinished``). Learns the columns from the first result.
    private func readRow() throws -> [SQLValue]? {
        guard !isFinished else { return nil }
        guard let result = connection.nextResult() else {
            isFinished = true
            return nil
        }
        defer { PQclear(result) }
        switch PQresultStatus(result) {
        case PGRES_SINGLE_TUPLE:
            if rowsFetched == 0 { (columns, oids) = PostgresConnection.columns(of: result) }
            rowsFetched += 1
            return PostgresConnection.values(of: result, row: 0, types: oids)
        case PGRES_TUPLES_OK:
            if rowsFetched == 0 { (columns, oids) = PostgresConnection.columns(of: result) }
            connection.drain()
            isFinished = true
            return nil
        case PGRES_COMMAND_OK, PGRES_EMPTY_QUERY:
            affectedRows = PostgresConnection.affectedRows(result)
            connection.drain()
            isFinished = true
            return nil
        default:
            let error = connection.error(result)
            connection.drain()
            isFinished = true
            throw error
        }
    }

    func fetch(_ limit: Int) throws -> [SQLRow] {
        try fetchRows(limit, columns, lookahead: &lookahead, next: readRow)
    }

    func close() {
        lookahead = nil
        if !isFinished {
            connection.drain()
            isFinished = true
        }
    }
}
#endif
