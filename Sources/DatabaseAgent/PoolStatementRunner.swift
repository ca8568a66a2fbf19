import Reactor
import Storage
import Synchronization

/// The runner over a ``ConnectionPool``. A statement that returns rows (it starts with SELECT, VALUES, SHOW, PRAGMA,
/// EXPLAIN, DESCRIBE or TABLE, or WITH without a change after it) runs as a Storage row stream: its rows are read
/// from the database a batch at a time, only as the agent asks for them (the agent asks once its caller has granted
/// a chunk), so a million-row answer never sits in memory, and the stream holds its pooled connection until it ends
/// or is cancelled. Any other statement runs as one query (its affected rows and insert id, and the rows of a
/// RETURNING, at once).
///
/// The timeout is the database's statement timeout: it covers the statement from its start to its last row, and when
/// it passes Storage cancels the statement on the server (`sqlite3_interrupt`, `PQcancel`, `KILL QUERY`); the
/// connection goes back to the pool healthy. A batch has one deadline for all its statements.
struct PoolStatementRunner: StatementRunner {
    let pool: ConnectionPool
    /// The loops statements were driven on, as Storage sees them.
    private let loops = LoopCache()

    init(pool: ConnectionPool) {
        self.pool = pool
    }

    /// Rows the stream reads from the driver at a time (the agent's batches are cut from them).
    static let streamBatchRows = 500

    func run(_ sql: String, _ parameters: [SQLValue], timeout: Duration) async throws -> any RowSource {
        try Task.checkCancellation()
        do {
            if Self.returnsRows(sql) {
                let stream = try await pool.stream(sql, parameters, batchRows: Self.streamBatchRows, timeout: timeout)
                return StreamSource(stream, timeout: timeout)
            }
            return WholeResultSource(try await pool.query(sql, parameters, timeout: timeout))
        } catch let error as StorageError where error.isStatementTimeout {
            throw RunnerError.timeout(timeout)
        }
    }

    /// The callback form. A select on PostgreSQL runs driven by the caller's loop
    /// (``ConnectionPool/stream(_:_:firstBatch:batchRows:timeout:drivenBy:completion:)``: libpq's non-blocking calls
    /// on the loop's thread, which hears the answer itself; the rows after the first batch, if any, are read by a
    /// stream on the connection's worker thread). Otherwise the pool's callbacks run on
    /// the connection's worker thread, which then reads the first batch (a job queued right behind the statement's)
    /// and reports from there: no task or continuation per request.
    func start(_ sql: String, _ parameters: [SQLValue], timeout: Duration, firstBatch maxRows: Int, loop: EventLoop,
               completion: @escaping @Sendable (Result<StartedStatement, any Error>) -> Void) -> (any RunnerWork)? {
        let returnsRows = Self.returnsRows(sql)
        if returnsRows, pool.drivesStatementsOnLoop {
            return pool.stream(sql, parameters, firstBatch: maxRows, batchRows: Self.streamBatchRows, timeout: timeout,
                               drivenBy: storageLoop(loop)) { result in
                switch result {
                case .failure(let error):
                    completion(.failure(Self.runnerError(error, timeout)))
                case .success(let start):
                    let rows = start.rows.map(\.values)
                    if let rest = start.rest {
                        completion(.success(StartedStatement(source: StreamSource(rest, timeout: timeout),
                                                             batch: RowBatch(rows: rows, isLast: false))))
                    } else {
                        let source = WholeResultSource(SQLResult(columns: start.columns,
                                                                 affectedRows: start.affectedRows))
                        completion(.success(StartedStatement(source: source, batch: RowBatch(
                            rows: rows, isLast: true, affectedRows: start.affectedRows))))
                    }
                }
            }
        }
        if returnsRows {
            pool.stream(sql, parameters, batchRows: Self.streamBatchRows, timeout: timeout,
                        on: InlineExecutor.shared) { result in
                switch result {
                case .failure(let error):
                    completion(.failure(Self.runnerError(error, timeout)))
                case .success(let stream):
                    let source = StreamSource(stream, timeout: timeout)
                    _ = source.nextBatch(maxRows: maxRows) { batch in
                        switch batch {
                        case .success(let batch):
                            completion(.success(StartedStatement(source: source, batch: batch)))
                        case .failure(let error):
                            source.cancel()
                            completion(.failure(error))
                        }
                    }
                }
            }
        } else {
            pool.query(sql, parameters, timeout: timeout, on: InlineExecutor.shared) { result in
                switch result {
                case .failure(let error):
                    completion(.failure(Self.runnerError(error, timeout)))
                case .success(let result):
                    let source = WholeResultSource(result)
                    completion(.success(StartedStatement(source: source, batch: source.take(maxRows: maxRows))))
                }
            }
        }
        return nil
    }

    /// The Storage view of the caller's loop (one per loop, kept by the runner).
    private func storageLoop(_ loop: EventLoop) -> ReactorStorageLoop {
        loops.storageLoop(loop)
    }

    /// A Storage timeout as the runner's; other errors as they are.
    static func runnerError(_ error: StorageError, _ timeout: Duration) -> any Error {
        error.isStatementTimeout ? RunnerError.timeout(timeout) : error
    }

    func runBatch(_ statements: [(sql: String, parameters: [SQLValue])], timeout: Duration) async throws
        -> BatchOutcome
    {
        let clock = ContinuousClock()
        let deadline = clock.now + timeout
        do {
            return try await pool.transaction { connection in
                var outcome = BatchOutcome(affectedRows: 0, lastInsertID: nil)
                for statement in statements {
                    try Task.checkCancellation()
                    let left = deadline - clock.now
                    guard left > .zero else { throw RunnerError.timeout(timeout) }
                    let result = try await connection.query(statement.sql, statement.parameters, timeout: left)
                    outcome.affectedRows += result.affectedRows
                    outcome.lastInsertID = result.lastInsertID
                }
                return outcome
            }
        } catch let error as StorageError where error.isStatementTimeout {
            throw RunnerError.timeout(timeout)
        }
    }

    var dialectName: String { pool.dialect.rawValue }

    func begin() async throws -> any TransactionSession { try await PoolTransaction.begin(on: pool) }

    /// Whether the statement's first keyword is one that returns rows (comments and parentheses before it skipped).
    /// Read as bytes (every keyword is ASCII): the agent asks this for every request.
    static func returnsRows(_ sql: String) -> Bool {
        var sql = sql
        return sql.withUTF8 { bytes in
            var i = 0
            let n = bytes.count
            func at(_ k: Int) -> UInt8 { k < n ? bytes[k] : 0 }
            while i < n {
                let b = bytes[i]
                if b == UInt8(ascii: " ") || (0x09...0x0D).contains(b) || b == UInt8(ascii: "(") {
                    i += 1
                } else if b == UInt8(ascii: "-") && at(i + 1) == UInt8(ascii: "-") {
                    while i < n && bytes[i] != UInt8(ascii: "\n") { i += 1 }
                } else if b == UInt8(ascii: "/") && at(i + 1) == UInt8(ascii: "*") {
                    var k = i + 2
                    while k + 1 < n && !(bytes[k] == UInt8(ascii: "*") && bytes[k + 1] == UInt8(ascii: "/")) { k += 1 }
                    guard k + 1 < n else { break }  // an unclosed comment: its text is the statement's start
                    i = k + 2
                } else {
                    break
                }
            }
            let first = Self.word(bytes, from: i)
            if first.keyword == "WITH" {
                // A common table expression before a change (WITH ... INSERT) runs as a query, for its affected rows.
                var k = first.end
                while k < n {
                    guard Self.isWordByte(bytes[k]) else {
                        k += 1
                        continue
                    }
                    let next = Self.word(bytes, from: k)
                    if changeWords.contains(next.keyword) { return false }
                    k = next.end
                }
                return true
            }
            return rowWords.contains(first.keyword)
        }
    }

    /// Letters, and every byte of a non-ASCII character (part of a word, never of a keyword).
    private static func isWordByte(_ b: UInt8) -> Bool {
        b >= 0x80 || ((b | 0x20) >= UInt8(ascii: "a") && (b | 0x20) <= UInt8(ascii: "z"))
    }

    /// The word from `start` on, upper-cased when it may be a keyword (ASCII, 8 letters at most; "" otherwise), and
    /// where it ends.
    private static func word(_ bytes: UnsafeBufferPointer<UInt8>, from start: Int) -> (keyword: String, end: Int) {
        var end = start
        var ascii = true
        while end < bytes.count && isWordByte(bytes[end]) {
            if bytes[end] >= 0x80 { ascii = false }
            end += 1
        }
        guard ascii, end - start <= 8 else { return ("", end) }
        return (String(decoding: bytes[start..<end].lazy.map { $0 & ~0x20 }, as: UTF8.self), end)
    }

    private static let rowWords: Set<String> = ["SELECT", "VALUES", "SHOW", "PRAGMA", "EXPLAIN", "DESCRIBE", "DESC",
                                                "TABLE"]
    private static let changeWords: Set<String> = ["INSERT", "UPDATE", "DELETE", "REPLACE", "MERGE"]
}

/// The ``ReactorStorageLoop`` of each loop a runner drove statements on.
final class LoopCache: Sendable {
    private let loops = Mutex<[ObjectIdentifier: ReactorStorageLoop]>([:])

    func storageLoop(_ loop: EventLoop) -> ReactorStorageLoop {
        loops.withLock { loops in
            if let known = loops[ObjectIdentifier(loop)] { return known }
            let made = ReactorStorageLoop(loop)
            loops[ObjectIdentifier(loop)] = made
            return made
        }
    }
}

/// Runs the pool's callbacks where they are called (the connection's worker thread): they only hand results on.
final class InlineExecutor: StorageExecutor {
    static let shared = InlineExecutor()
    func execute(_ work: @escaping @Sendable () -> Void) { work() }
}

/// The rows of a Storage row stream, cut into the agent's batches (a stream batch larger than the agent asks for is
/// kept for the next call).
final class StreamSource: RowSource {
    let columns: [ColumnInfo]
    private let stream: SQLRowStream
    private let timeout: Duration
    /// Rows read from the stream and not handed out yet (one task at a time calls `nextBatch`).
    private let leftover = Mutex<[[SQLValue]]>([])

    init(_ stream: SQLRowStream, timeout: Duration) {
        self.stream = stream
        self.timeout = timeout
        let names = stream.columns.names
        let types = stream.columns.types
        columns = names.indices.map { index in
            ColumnInfo(name: names[index], type: ColumnType(index < types.count ? types[index] : .unknown))
        }
    }

    func nextBatch(maxRows: Int) async throws -> RowBatch {
        let limit = max(1, maxRows)
        var rows = leftover.withLock { rows in
            defer { rows = [] }
            return rows
        }
        while rows.count < limit {
            let next: [SQLRow]?
            do {
                next = try await stream.next()
            } catch let error as StorageError where error.isStatementTimeout {
                throw RunnerError.timeout(timeout)
            }
            guard let next else { break }
            rows += next.lazy.map(\.values)
            if stream.isFinished { break }
        }
        if rows.count > limit {
            let rest = Array(rows[limit...])
            rows.removeLast(rows.count - limit)
            leftover.withLock { $0 = rest }
            return RowBatch(rows: rows, isLast: false)
        }
        return RowBatch(rows: rows, isLast: stream.isFinished)
    }

    func nextBatch(maxRows: Int, completion: @escaping @Sendable (Result<RowBatch, any Error>) -> Void)
        -> (any RunnerWork)?
    {
        let rows = leftover.withLock { rows in
            defer { rows = [] }
            return rows
        }
        collect(rows, limit: max(1, maxRows), completion: completion)
        return nil
    }

    /// Reads stream batches (each a job on the connection's worker thread, reported there) until `limit` rows or the
    /// end, as the async `nextBatch` does.
    private func collect(_ rows: [[SQLValue]], limit: Int,
                         completion: @escaping @Sendable (Result<RowBatch, any Error>) -> Void) {
        guard rows.count < limit else { return completion(.success(cut(rows, limit: limit))) }
        stream.next(on: InlineExecutor.shared) { [self] result in
            switch result {
            case .failure(let error):
                completion(.failure(PoolStatementRunner.runnerError(error, timeout)))
            case .success(nil):
                completion(.success(cut(rows, limit: limit)))
            case .success(let next?):
                var rows = rows
                rows += next.lazy.map(\.values)
                if stream.isFinished {
                    completion(.success(cut(rows, limit: limit)))
                } else {
                    collect(rows, limit: limit, completion: completion)
                }
            }
        }
    }

    /// The first `limit` rows as a batch; the rest kept for the next call.
    private func cut(_ rows: [[SQLValue]], limit: Int) -> RowBatch {
        guard rows.count > limit else { return RowBatch(rows: rows, isLast: stream.isFinished) }
        leftover.withLock { $0 = Array(rows[limit...]) }
        return RowBatch(rows: Array(rows[..<limit]), isLast: false)
    }

    func cancel() {
        leftover.withLock { $0 = [] }
        stream.cancel(on: InlineExecutor.shared)
    }

    /// A source dropped without a cancel (the agent always cancels or reads to the end) still frees its connection.
    deinit {
        if !stream.isFinished { stream.cancel(on: InlineExecutor.shared) }
    }
}

/// A whole result cut into batches: a statement that returns no rows, or the rows of a RETURNING. The column types
/// are Storage's, else those its rows agree on.
final class WholeResultSource: RowSource {
    let columns: [ColumnInfo]
    private let state: Mutex<(rows: [SQLRow], next: Int)>
    private let affectedRows: Int64
    private let lastInsertID: Int64?

    init(_ result: SQLResult) {
        let rows = result.rows
        let types = result.columns.types
        columns = result.columns.names.enumerated().map { index, name in
            let known = index < types.count ? ColumnType(types[index]) : .unknown
            return ColumnInfo(name: name, type: known != .unknown ? known
                              : ColumnType.of(rows.lazy.map { $0.values[index] }))
        }
        state = Mutex((rows, 0))
        affectedRows = result.affectedRows
        lastInsertID = result.lastInsertID
    }

    func nextBatch(maxRows: Int) async throws -> RowBatch { take(maxRows: maxRows) }

    func nextBatch(maxRows: Int, completion: @escaping @Sendable (Result<RowBatch, any Error>) -> Void)
        -> (any RunnerWork)?
    {
        completion(.success(take(maxRows: maxRows)))
        return nil
    }

    /// The next rows, at once.
    func take(maxRows: Int) -> RowBatch {
        let (rows, isLast) = state.withLock { s -> ([[SQLValue]], Bool) in
            let end = min(s.rows.count, s.next + max(1, maxRows))
            let batch = s.rows[s.next..<end].map(\.values)
            s.next = end
            return (batch, end == s.rows.count)
        }
        return RowBatch(rows: rows, isLast: isLast, affectedRows: affectedRows, lastInsertID: lastInsertID)
    }

    func cancel() {
        state.withLock { s in
            s.rows = []
            s.next = 0
        }
    }
}
