import Logging
import Storage
import Synchronization

/// A stored user: the salted PBKDF2 hash, never the password.
struct StoredUser: Sendable {
    var name: String
    var salt: [UInt8]
    var hash: [UInt8]
    var iterations: Int
}

/// The chat tables and their statements, on any database the pool speaks (SQLite, MySQL, PostgreSQL).
///
/// ```
/// chat_users    (id, name UNIQUE, salt, hash, iterations, created_ms)
/// chat_friends  (owner, friend)  PRIMARY KEY (owner, friend); a friendship is stored both ways
/// chat_messages (id, room, seq, sender, sent_ms, body)  INDEX (room, seq)
/// ```
///
/// Every call is async and runs on the pool's worker threads, never on a reactor loop. Safe from any thread.
struct ChatStore: Sendable {
    let pool: ConnectionPool

    /// Creates the tables when missing.
    func createSchema() async throws {
        let d = pool.dialect
        try await pool.execute("""
            CREATE TABLE IF NOT EXISTS chat_users (id \(d.autoIncrementPrimaryKey), name \(d.varchar(64)) NOT NULL UNIQUE,
            salt \(d.blobType) NOT NULL, hash \(d.blobType) NOT NULL, iterations \(d.bigintType) NOT NULL,
            created_ms \(d.bigintType) NOT NULL)\(d.tableOptions)
            """)
        try await pool.execute("""
            CREATE TABLE IF NOT EXISTS chat_friends (owner \(d.varchar(64)) NOT NULL, friend \(d.varchar(64)) NOT NULL,
            PRIMARY KEY (owner, friend))\(d.tableOptions)
            """)
        try await pool.execute("""
            CREATE TABLE IF NOT EXISTS chat_messages (id \(d.autoIncrementPrimaryKey), room \(d.varchar(255)) NOT NULL,
            seq \(d.bigintType) NOT NULL, sender \(d.varchar(64)) NOT NULL, sent_ms \(d.bigintType) NOT NULL,
            body \(d.textType) NOT NULL)\(d.tableOptions)
            """)
        do {
            try await pool.execute("CREATE INDEX chat_messages_room_seq ON chat_messages (room, seq)")
        } catch {
            // Exists already (MySQL has no CREATE INDEX IF NOT EXISTS).
        }
    }

    func user(named name: String) async throws -> StoredUser? {
        guard let row = try await pool.queryFirst(
            "SELECT name, salt, hash, iterations FROM chat_users WHERE name = ?", [.text(name)]) else { return nil }
        return StoredUser(name: try row.decode("name"), salt: try row.decode("salt"), hash: try row.decode("hash"),
                          iterations: try row.decode("iterations"))
    }

    /// Inserts a user; false when the name is taken.
    func insertUser(_ user: StoredUser, createdMs: Int64) async throws -> Bool {
        if try await self.user(named: user.name) != nil { return false }
        do {
            try await pool.execute(
                "INSERT INTO chat_users (name, salt, hash, iterations, created_ms) VALUES (?, ?, ?, ?, ?)",
                [.text(user.name), .blob(user.salt), .blob(user.hash), .integer(Int64(user.iterations)),
                 .integer(createdMs)])
            return true
        } catch {
            // A concurrent register of the same name loses on the UNIQUE constraint.
            if try await self.user(named: user.name) != nil { return false }
            throw error
        }
    }

    /// Stores a friendship both ways (idempotent).
    func addFriendship(_ a: String, _ b: String) async throws {
        let sql = pool.dialect.upsert(table: "chat_friends", columns: ["owner", "friend"], conflict: ["owner", "friend"],
                                      update: [])
        try await pool.transaction { conn in
            try await conn.execute(sql, [.text(a), .text(b)])
            try await conn.execute(sql, [.text(b), .text(a)])
        }
    }

    func friends(of name: String) async throws -> Set<String> {
        let rows = try await pool.query("SELECT friend FROM chat_friends WHERE owner = ?", [.text(name)]).rows
        return Set(try rows.map { try $0.decode("friend", as: String.self) })
    }

    /// The last `limit` messages of a room, oldest first, and the room's highest sequence number (0 if none).
    func history(room: String, limit: Int) async throws -> (messages: [Switchyard_Chat_RoomMessage], lastSequence: UInt64) {
        let top = try await pool.queryFirst("SELECT MAX(seq) AS s FROM chat_messages WHERE room = ?", [.text(room)])
        let last = (try top?.decode("s", as: Int64?.self)).flatMap { $0 } ?? 0
        guard limit > 0 else { return ([], UInt64(max(0, last))) }
        let rows = try await pool.query(
            "SELECT seq, sender, sent_ms, body FROM chat_messages WHERE room = ? ORDER BY seq DESC LIMIT \(limit)",
            [.text(room)]).rows
        var messages: [Switchyard_Chat_RoomMessage] = []
        for row in rows.reversed() {
            var m = Switchyard_Chat_RoomMessage()
            m.room = room
            m.sequence = UInt64(max(0, try row.decode("seq", as: Int64.self)))
            m.sender = try row.decode("sender")
            m.timeMs = try row.decode("sent_ms")
            m.text = try row.decode("body")
            messages.append(m)
        }
        return (messages, UInt64(max(0, last)))
    }

    func insertMessages(_ messages: [Switchyard_Chat_RoomMessage]) async throws {
        try await pool.transaction { conn in
            for m in messages {
                try await conn.execute(
                    "INSERT INTO chat_messages (room, seq, sender, sent_ms, body) VALUES (?, ?, ?, ?, ?)",
                    [.text(m.room), .integer(Int64(m.sequence)), .text(m.sender), .integer(m.timeMs), .text(m.text)])
            }
        }
    }
}

/// Writes room messages to the store in batches, in the background, through a bounded ``BatchWriter``: `append`
/// never waits for the database, and a flood cannot grow memory past ``defaultConfiguration``'s bounds: the server
/// checks ``hasRoom(text:room:sender:)`` before it accepts a room message and refuses it (the sender is told to
/// retry) when the queue is full, so nothing is dropped. A failed batch is retried; one that fails every attempt is
/// logged and its messages counted as lost. One writer at a time puts what accumulated into one transaction. The
/// writer loop is ``run()``, a child task of `ChatServer.run()`; it ends once ``finish()`` is called (after writing
/// what it holds, bounded by the drain timeout). Safe to call from any thread.
final class HistoryWriter: Sendable {
    /// At most 100,000 messages or 64 MiB of text held; at most 500 messages per transaction; written as soon as
    /// the writer is free; a failed batch is tried 3 more times, 200 ms apart.
    static let defaultConfiguration = BatchWriterConfiguration(
        capacity: 100_000, maxCost: 64 << 20, batchSize: 500, flushInterval: .zero, retries: 3,
        retryDelay: .milliseconds(200), drainTimeout: .seconds(5))

    /// What a message costs against the bound: its text, room and sender bytes and 32 for the rest.
    static func cost(text: String, room: String, sender: String) -> Int {
        text.utf8.count + room.utf8.count + sender.utf8.count + 32
    }

    private let batches: BatchWriter<Switchyard_Chat_RoomMessage>

    /// - Parameter lost: Told how many messages a batch that failed every attempt held (for the counters).
    init(store: ChatStore, logger: Logger, configuration: BatchWriterConfiguration = HistoryWriter.defaultConfiguration,
         lost: @escaping @Sendable (Int) -> Void = { _ in }) {
        batches = BatchWriter(
            configuration: configuration, label: "chat history", logger: logger,
            cost: { m in HistoryWriter.cost(text: m.text, room: m.room, sender: m.sender) },
            observe: { event, _ in
                switch event {
                case .writeFailed(let count, let error, let willRetry):
                    if willRetry { return }
                    lost(count)
                    logger.warning("could not store chat history", metadata: ["messages": "\(count)", "error": "\(error)"])
                case .dropped(let count):
                    lost(count)
                case .written:
                    break
                }
            },
            write: { messages in try await store.insertMessages(messages) })
    }

    deinit { batches.finish() }

    /// Batches that failed to be written (logged once each).
    var failedBatches: Int { batches.statistics.failedWrites }

    /// The writer's counters (received, written, dropped, failed, queued).
    var statistics: BatchWriterStatistics { batches.statistics }

    /// True when a message of this text and room (from `sender`, or the longest name when nil) fits in the queue
    /// now. Any thread.
    func hasRoom(text: String, room: String, sender: String?) -> Bool {
        let longestName = 32
        let senderBytes = sender?.utf8.count ?? longestName
        return batches.hasRoom(forCost: HistoryWriter.cost(text: text, room: room, sender: "") + senderBytes)
    }

    /// Queues a message; ``run()`` writes it. Any thread, never waits.
    func append(_ message: Switchyard_Chat_RoomMessage) {
        batches.append(message)
    }

    /// The writer loop: writes batches until ``finish()``, then what is left (bounded by the drain timeout).
    func run() async {
        await batches.run()
    }

    /// Waits until everything appended so far is written (or failed, or dropped).
    func flush() async {
        await batches.flush()
    }

    /// Tells ``run()`` to write what is held (at most the drain timeout) and return.
    func finish() {
        batches.finish()
    }
}
