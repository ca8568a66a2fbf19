#if PostgreSQL
import CLibPQ

/// One statement of a PostgreSQL connection driven by an event loop instead of the connection's worker thread:
/// sent with libpq's non-blocking calls (`PQsendQueryParams`, `PQflush`), its rows read in single-row mode as the
/// socket turns readable (`PQconsumeInput`, `PQisBusy`, `PQgetResult`), so that no call ever waits on the server.
///
///     send --flush pending?--> wait writable --PQflush--> wait readable --PQconsumeInput, PQgetResult while
///     not busy--> rows ... --NULL result--> finished (or failed)
///                      \--maxRows read first--> batch full: the rest is read by a PostgresStream (worker thread)
///
/// Used on the loop's thread only, while its ``SQLConnection`` is held (no job of the worker touches the connection
/// meanwhile). The connection is in non-blocking mode from ``init`` until the statement finishes or is handed over.
final class PostgresLoopStatement {
    /// What the statement waits for after ``advance(readable:writable:maxRows:)``.
    enum Step: Equatable {
        /// More input (and, when `write`, room to flush the rest of the request).
        case waiting(write: Bool)
        /// `maxRows` rows are read and more may come.
        case batchFull
        /// The statement is over (its results read to the end); ``failure`` tells whether it failed.
        case finished
    }

    private let connection: PostgresConnection
    private let conn: OpaquePointer
    /// The connection's socket for the loop to watch (a duplicate the connection owns: libpq may close its own).
    let socket: Int32
    private(set) var columns = SQLColumns([])
    private var oids: [UInt32] = []
    private var rows: [SQLRow] = []
    private(set) var rowsFetched = 0
    private(set) var affectedRows: Int64 = 0
    /// The statement's error (the first one), once finished.
    private(set) var failure: StorageError?
    private(set) var isFinished = false
    private var flushPending = false

    /// Sends the statement. Throws ``StorageError`` when it cannot be sent (the connection is then unusable).
    init(connection: PostgresConnection, sql: String, parameters: [SQLValue]) throws {
        guard let conn = connection.conn, PQstatus(conn) == CONNECTION_OK else {
            throw StorageError.connectionLost(.init("the PostgreSQL connection is closed", driver: "postgres"))
        }
        self.connection = connection
        self.conn = conn
        socket = connection.socketForLoop()
        guard socket >= 0 else {
            throw StorageError.connectionLost(.init("the PostgreSQL connection has no socket", driver: "postgres"))
        }
        guard PQsetnonblocking(conn, 1) == 0 else { throw connection.error(nil) }
        let sent = try connection.withParameters(sql, parameters) { text, count, types, values, lengths, formats in
            PQsendQueryParams(conn, text, count, types, values, lengths, formats, 0)
        }
        guard sent == 1 else {
            let error = connection.error(nil)
            PQsetnonblocking(conn, 0)
            throw error
        }
        guard PQsetSingleRowMode(conn) == 1 else {
            PQsetnonblocking(conn, 0)
            throw StorageError.other(.init("libpq refused single-row mode", driver: "postgres"))
        }
        switch PQflush(conn) {
        case 0: flushPending = false
        case 1: flushPending = true
        default:
            let error = connection.error(nil)
            PQsetnonblocking(conn, 0)
            throw StorageError.connectionLost(error.detail)
        }
    }

    /// `true` while part of the request waits to be written (watch for writable).
    var wantsWrite: Bool { flushPending }

    /// Moves on with what the socket has: flushes the request, reads input, and takes results while libpq has whole
    /// ones, up to `maxRows` rows held.
    func advance(readable: Bool, writable: Bool, maxRows: Int) -> Step {
        guard !isFinished else { return .finished }
        if flushPending {
            switch PQflush(conn) {
            case 0: flushPending = false
            case 1: break
            default: return fail(StorageError.connectionLost(connection.error(nil).detail))
            }
        }
        if readable, PQconsumeInput(conn) == 0 {
            return fail(StorageError.connectionLost(connection.error(nil).detail))
        }
        while rows.count < maxRows, PQisBusy(conn) == 0 {
            guard let result = PQgetResult(conn) else {
                finish()
                return .finished
            }
            take(result)
            PQclear(result)
        }
        if rows.count >= maxRows { return .batchFull }
        return .waiting(write: flushPending)
    }

    private func take(_ result: OpaquePointer) {
        switch PQresultStatus(result) {
        case PGRES_SINGLE_TUPLE:
            if rowsFetched == 0 { (columns, oids) = PostgresConnection.columns(of: result) }
            rowsFetched += 1
            rows.append(SQLRow(columns: columns, values: PostgresConnection.values(of: result, row: 0, types: oids)))
        case PGRES_TUPLES_OK:
            if rowsFetched == 0 { (columns, oids) = PostgresConnection.columns(of: result) }
        case PGRES_COMMAND_OK, PGRES_EMPTY_QUERY:
            affectedRows = PostgresConnection.affectedRows(result)
        default:
            if failure == nil { failure = connection.error(result) }
        }
    }

    /// The rows read since the last call.
    func takeRows() -> [SQLRow] {
        defer { rows = [] }
        return rows
    }

    private func finish() {
        isFinished = true
        PQsetnonblocking(conn, 0)
    }

    private func fail(_ error: StorageError) -> Step {
        if failure == nil { failure = error }
        isFinished = true
        PQsetnonblocking(conn, 0)
        return .finished
    }

    /// The rest of a statement whose batch is full, as a driver stream read with blocking calls (on the worker).
    func handOver() -> PostgresStream {
        PQsetnonblocking(conn, 0)
        isFinished = true
        return PostgresStream(continuing: connection, columns: columns, oids: oids, rowsFetched: rowsFetched)
    }
}
#endif
