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

/// Writes room messages to the store in batches, in the background: `append` never waits for the database, and
/// one task at a time drains what accumulated into one transaction. Safe to call from any thread.
final class HistoryWriter: Sendable {
    private struct State {
        var pending: [Switchyard_Chat_RoomMessage] = []
        var running = false
        var idleWaiters: [CheckedContinuation<Void, Never>] = []
    }

    private let store: ChatStore
    private let logger: Logger
    private let state = Mutex(State())
    private let failures = Atomic<Int>(0)

    init(store: ChatStore, logger: Logger) {
        self.store = store
        self.logger = logger
    }

    /// Batches that failed to be written (logged once each).
    var failedBatches: Int { failures.load(ordering: .relaxed) }

    func append(_ message: Switchyard_Chat_RoomMessage) {
        let start = state.withLock { s -> Bool in
            s.pending.append(message)
            if s.running { return false }
            s.running = true
            return true
        }
        if start { Task { await drain() } }
    }

    private func drain() async {
        while true {
            let (batch, waiters) = state.withLock { s -> ([Switchyard_Chat_RoomMessage], [CheckedContinuation<Void, Never>]) in
                if s.pending.isEmpty {
                    s.running = false
                    defer { s.idleWaiters = [] }
                    return ([], s.idleWaiters)
                }
                defer { s.pending = [] }
                return (s.pending, [])
            }
            if batch.isEmpty {
                for w in waiters { w.resume() }
                return
            }
            do {
                try await store.insertMessages(batch)
            } catch {
                failures.wrappingAdd(1, ordering: .relaxed)
                logger.warning("could not store chat history", metadata: ["messages": "\(batch.count)", "error": "\(error)"])
            }
        }
    }

    /// Waits until everything appended so far is written (or failed).
    func flush() async {
        await withCheckedContinuation { (c: CheckedContinuation<Void, Never>) in
            let idle = state.withLock { s -> Bool in
                if !s.running && s.pending.isEmpty { return true }
                s.idleWaiters.append(c)
                return false
            }
            if idle { c.resume() }
        }
    }
}
