#if canImport(Glibc)
import Glibc
#endif
import LarsWire
import Reactor
import Storage
import SwiftProtobuf

/// The database agent's client for a thread that can block (Lars's API style): each call sends from the caller's
/// thread and reads the answer on the caller's own TCP connection, one request at a time. Give each thread its own
/// instance; not for async code (use ``DatabaseAgentClient`` there). Not thread-safe: one thread at a time.
public final class BlockingDatabaseAgentClient {
    public let token: String
    /// How long a call waits for each answer frame before it fails with `timeout` (and the connection is closed).
    public let timeout: Duration
    private var fd: Int32
    private var nextID: UInt64 = 1
    private var buffer: [UInt8] = []
    private var start = 0
    private let maxBodyLength: Int

    /// Connects to the agent (blocking, within `timeout`). Throws the connect error.
    public init(host: String = "127.0.0.1", port: Int, token: String, timeout: Duration = .seconds(30),
                maxBodyLength: Int = FrameParser.defaultMaxBodyLength) throws {
        self.token = token
        self.timeout = timeout
        self.maxBodyLength = maxBodyLength
        let address = try SocketAddress(host: host, port: port)
        fd = try Posix.blockingSocket(type: Int32(SOCK_STREAM.rawValue))
        do {
            try Posix.setTimeout(fd, option: SO_SNDTIMEO, timeout)
            try Posix.setTimeout(fd, option: SO_RCVTIMEO, timeout)
            guard case .processed = try Posix.connect(fd, to: address) else {
                throw DatabaseAgentClientError(kind: .connectionClosed, message: "connect to \(address) timed out")
            }
            try Posix.setOption(fd, Int32(IPPROTO_TCP), TCP_NODELAY, 1)
        } catch {
            Posix.close(fd)
            fd = -1
            throw error
        }
    }

    deinit { close() }

    /// Closes the connection (later calls fail with `connectionClosed`).
    public func close() {
        if fd >= 0 { Posix.close(fd) }
        fd = -1
    }

    /// Runs a named statement of the access file and returns its whole result.
    public func execute(statement name: String, _ parameters: [SQLValue] = [], rowLimit: Int = 0,
                        timeout: Duration? = nil) throws(DatabaseAgentClientError) -> AgentResult {
        try execute(.named(name, parameters), rowLimit: rowLimit, timeout: timeout)
    }

    /// Runs SQL text (the token needs `sql`) and returns its whole result.
    public func execute(sql: String, _ parameters: [SQLValue] = [], rowLimit: Int = 0,
                        timeout: Duration? = nil) throws(DatabaseAgentClientError) -> AgentResult {
        try execute(.sql(sql, parameters), rowLimit: rowLimit, timeout: timeout)
    }

    /// Runs a statement and returns its whole result (granting each chunk as it arrives).
    public func execute(_ statement: AgentStatement, rowLimit: Int = 0, timeout: Duration? = nil,
                        batchRows: Int = 0) throws(DatabaseAgentClientError) -> AgentResult {
        let id = takeID()
        try send(AgentResult.executeMessage(id: id, token: token, statement: statement, rowLimit: rowLimit,
                                            timeout: timeout, batchRows: batchRows), .execute)
        return try collect(id)
    }

    /// Runs statements in one transaction (all or nothing).
    public func batch(_ statements: [AgentStatement], timeout: Duration? = nil)
        throws(DatabaseAgentClientError) -> AgentResult
    {
        let id = takeID()
        try send(AgentResult.batchMessage(id: id, token: token, statements: statements, timeout: timeout), .batch)
        return try collect(id)
    }

    private func takeID() -> UInt64 {
        defer { nextID += 1 }
        return nextID
    }

    private func collect(_ id: UInt64) throws(DatabaseAgentClientError) -> AgentResult {
        var assembler = ResultAssembler()
        while true {
            let (messageID, body) = try receiveFrame()
            // Answers of earlier requests that this client gave up on (timeouts) are skipped.
            guard ResultAssembler.requestID(body: body) == id else { continue }
            switch assembler.take(messageID: messageID, body: body) {
            case .columns:
                continue
            case .rows(let grant):
                if grant {
                    var more = Switchyard_Dbagent_MoreRows()
                    more.requestID = id
                    try send(more, .moreRows)
                }
            case .finished(let result): return result
            case .failed(let error): throw error
            }
        }
    }

    private func send<M: SwiftProtobuf.Message>(_ message: M, _ id: DatabaseAgentMessageID)
        throws(DatabaseAgentClientError)
    {
        guard fd >= 0 else { throw .init(kind: .connectionClosed, message: "the client is closed") }
        let body: [UInt8]
        do { body = try message.serializedBytes() } catch {
            throw .init(kind: .tooLarge, message: "cannot encode the request: \(error)")
        }
        let frame = FrameParser.encode(messageID: id.rawValue, body: body)
        var sent = 0
        while sent < frame.count {
            let result = frame.withUnsafeBytes { raw in
                Result { () throws(IOError) -> IOResult<Int> in
                    try Posix.send(fd, UnsafeRawBufferPointer(rebasing: raw[sent...]))
                }
            }
            switch result {
            case .success(.processed(let n)): sent += n
            case .success(.wouldBlock):
                close()
                throw .init(kind: .timeout, message: "the agent took no bytes within \(timeout)")
            case .failure(let error):
                close()
                throw .init(kind: .connectionClosed, message: "\(error)")
            }
        }
    }

    /// Reads one whole frame (header and body).
    private func receiveFrame() throws(DatabaseAgentClientError) -> (Int32, [UInt8]) {
        while true {
            let available = buffer.count - start
            if available >= 8 {
                let header = buffer[start..<start + 8].withUnsafeBytes { raw in
                    (raw.loadUnaligned(fromByteOffset: 0, as: Int32.self).littleEndian,
                     raw.loadUnaligned(fromByteOffset: 4, as: Int32.self).littleEndian)
                }
                let length = Int(header.1)
                guard length >= 0, length <= maxBodyLength else {
                    close()
                    throw .init(kind: .protocolError, message: "frame body of \(length) bytes")
                }
                if available >= 8 + length {
                    let body = Array(buffer[start + 8..<start + 8 + length])
                    start += 8 + length
                    if start == buffer.count {
                        buffer.removeAll(keepingCapacity: true)
                        start = 0
                    }
                    return (header.0, body)
                }
            }
            if start > 0 {
                buffer.removeFirst(start)
                start = 0
            }
            try fill()
        }
    }

    private func fill() throws(DatabaseAgentClientError) {
        guard fd >= 0 else { throw .init(kind: .connectionClosed, message: "the client is closed") }
        var chunk = [UInt8](repeating: 0, count: 64 << 10)
        let result = chunk.withUnsafeMutableBytes { raw in
            Result { () throws(IOError) -> IOResult<Int> in try Posix.receive(fd, into: raw) }
        }
        switch result {
        case .success(.processed(let n)) where n > 0:
            buffer.append(contentsOf: chunk[0..<n])
        case .success(.processed):
            close()
            throw .init(kind: .connectionClosed, message: "the agent closed the connection")
        case .success(.wouldBlock):
            close()
            throw .init(kind: .timeout, message: "no answer within \(timeout)")
        case .failure(let error):
            close()
            throw .init(kind: .connectionClosed, message: "\(error)")
        }
    }
}
