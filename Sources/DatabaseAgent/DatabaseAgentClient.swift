import DequeModule
import Messaging
import Reactor
import Storage
import SwiftProtobuf
import Synchronization

/// The async client of a database agent: one TCP connection, any number of requests at a time (each with its own
/// request id), answers matched back to them.
///
/// ```swift
/// let agent = try await DatabaseAgentClient.connect(host: "127.0.0.1", port: 7795, token: "s3cret", loop: loop)
/// let user = try await agent.execute(statement: "user_by_id", [7]).rows.first
/// for try await rows in try await agent.stream(statement: "all_users") { ... }   // MoreRows as it is consumed
/// await agent.close()
/// ```
///
/// Safe to call from any task. A request whose task is cancelled is cancelled at the agent too.
public final class DatabaseAgentClient: Sendable {
    public let token: String
    private let frames: AsyncFrameClient
    private let state = Mutex(State())
    private let reader: Mutex<Task<Void, Never>?> = Mutex(nil)

    private struct State {
        var nextID: UInt64 = 1
        /// The open requests: a stream's frames go to its channel, a whole result is assembled by the reader.
        var channels: [UInt64: Receiver] = [:]
        var closed: DatabaseAgentClientError?
    }

    private enum Receiver {
        case stream(Channel)
        case whole(PendingResult)
    }

    private init(frames: AsyncFrameClient, token: String) {
        self.frames = frames
        self.token = token
    }

    /// Connects to the agent at `host:port`; `loop` does the connection's I/O. Throws the connect error.
    public static func connect(host: String = "127.0.0.1", port: Int, token: String, loop: EventLoop,
                               connectTimeout: Duration = .seconds(5)) async throws -> DatabaseAgentClient {
        // The answers are routed on the loop thread as they are decoded (`route`); the reader task only sees the
        // connection end. The client is set once connected (frames cannot come before the first request).
        let target = Mutex<DatabaseAgentClient?>(nil)
        let frames = try await AsyncFrameClient.connect(
            host: host, port: port, loop: loop, bufferCapacity: 64, connectTimeout: connectTimeout,
            onFrame: { frame in target.withLock { $0 }?.route(frame) ?? false })
        let client = DatabaseAgentClient(frames: frames, token: token)
        target.withLock { $0 = client }
        client.reader.withLock { $0 = Task { await client.readAnswers() } }
        return client
    }

    /// Runs a named statement of the access file and returns its whole result.
    public func execute(statement name: String, _ parameters: [SQLValue] = [], rowLimit: Int = 0,
                        timeout: Duration? = nil) async throws(DatabaseAgentClientError) -> AgentResult {
        try await execute(.named(name, parameters), rowLimit: rowLimit, timeout: timeout)
    }

    /// Runs SQL text (the token needs `sql`) and returns its whole result.
    public func execute(sql: String, _ parameters: [SQLValue] = [], rowLimit: Int = 0,
                        timeout: Duration? = nil) async throws(DatabaseAgentClientError) -> AgentResult {
        try await execute(.sql(sql, parameters), rowLimit: rowLimit, timeout: timeout)
    }

    /// Runs a statement and returns its whole result (granting every chunk as it arrives).
    ///
    /// The reader folds the answers in (granting every chunk but the last as it arrives) and wakes this task once,
    /// with the result.
    public func execute(_ statement: AgentStatement, rowLimit: Int = 0, timeout: Duration? = nil,
                        batchRows: Int = 0) async throws(DatabaseAgentClientError) -> AgentResult {
        let (id, pending) = try openWhole()
        let request = AgentResult.executeMessage(id: id, token: token, statement: statement, rowLimit: rowLimit,
                                                 timeout: timeout, batchRows: batchRows)
        try await send(request, .execute)
        return try await wait(pending, id: id)
    }

    /// Runs statements in one transaction (all or nothing): the affected rows of all, the last insert id of the last.
    public func batch(_ statements: [AgentStatement], timeout: Duration? = nil)
        async throws(DatabaseAgentClientError) -> AgentResult
    {
        let (id, pending) = try openWhole()
        try await send(AgentResult.batchMessage(id: id, token: token, statements: statements, timeout: timeout), .batch)
        return try await wait(pending, id: id)
    }

    /// Runs a statement and returns its rows as they come, a batch at a time: the agent reads the next batch only
    /// when this stream has handed out the one before. Waits for the columns (or the error) first.
    public func stream(_ statement: AgentStatement, rowLimit: Int = 0, timeout: Duration? = nil, batchRows: Int = 0)
        async throws(DatabaseAgentClientError) -> AgentRowStream
    {
        let (id, channel) = try open()
        let request = AgentResult.executeMessage(id: id, token: token, statement: statement, rowLimit: rowLimit,
                                                 timeout: timeout, batchRows: batchRows)
        try await send(request, .execute)
        let first = try await next(channel, id: id)
        var assembler = ResultAssembler()
        switch assembler.take(messageID: first.messageID, body: first.body) {
        case .failed(let error):
            forget(id)
            throw error
        case .finished(let result):
            forget(id)
            return AgentRowStream(client: self, id: id, channel: channel, columns: [], finished: result)
        case .columns:
            return AgentRowStream(client: self, id: id, channel: channel, columns: assembler.result.columns,
                                  finished: nil)
        case .rows:
            // Rows without columns first: hand them out first.
            channel.pushFront(first)
            return AgentRowStream(client: self, id: id, channel: channel, columns: [], finished: nil)
        }
    }

    /// Closes the connection; requests still waiting fail with `connectionClosed`.
    public func close() async {
        await frames.close()
        await reader.withLock { $0 }?.value
    }

    // MARK: Plumbing

    private func open() throws(DatabaseAgentClientError) -> (UInt64, Channel) {
        let channel = Channel()
        return (try register(.stream(channel)), channel)
    }

    private func openWhole() throws(DatabaseAgentClientError) -> (UInt64, PendingResult) {
        let pending = PendingResult()
        return (try register(.whole(pending)), pending)
    }

    private func register(_ receiver: Receiver) throws(DatabaseAgentClientError) -> UInt64 {
        let result: Result<UInt64, DatabaseAgentClientError> = state.withLock { s in
            if let closed = s.closed { return .failure(closed) }
            let id = s.nextID
            s.nextID += 1
            s.channels[id] = receiver
            return .success(id)
        }
        return try result.get()
    }

    /// The whole result of request `id`; a cancelled task cancels the request at the agent.
    private func wait(_ pending: PendingResult, id: UInt64) async throws(DatabaseAgentClientError) -> AgentResult {
        let outcome = await pending.outcome()
        switch outcome {
        case .success(let result):
            return result
        case .failure(let error) where error.kind == .cancelled && pending.wasCancelled:
            await cancelRequest(id)
            throw error
        case .failure(let error):
            throw error
        }
    }

    func forget(_ id: UInt64) { _ = state.withLock { $0.channels.removeValue(forKey: id) } }

    private func send<M: SwiftProtobuf.Message>(_ message: M, _ id: DatabaseAgentMessageID)
        async throws(DatabaseAgentClientError)
    {
        do {
            try await frames.send(message, id: id)
        } catch {
            throw DatabaseAgentClientError(kind: .connectionClosed, message: "\(error)")
        }
    }

    func grantChunk(_ id: UInt64) async throws(DatabaseAgentClientError) {
        var more = Switchyard_Dbagent_MoreRows()
        more.requestID = id
        try await send(more, .moreRows)
    }

    func cancelRequest(_ id: UInt64) async {
        forget(id)
        var cancel = Switchyard_Dbagent_Cancel()
        cancel.requestID = id
        try? await frames.send(cancel, id: DatabaseAgentMessageID.cancel)
    }

    /// The next answer of request `id`; a cancelled task cancels the request at the agent.
    func next(_ channel: Channel, id: UInt64) async throws(DatabaseAgentClientError) -> InboundFrame {
        do {
            return try await channel.next()
        } catch let error as DatabaseAgentClientError {
            throw error
        } catch {
            await cancelRequest(id)
            throw DatabaseAgentClientError(kind: .cancelled, message: "the task was cancelled")
        }
    }

    /// Loop thread: an answer frame goes to its request (a stream's channel, or the whole result being assembled;
    /// a grant for the next chunk leaves from here). Frames of requests no longer open are dropped.
    private func route(_ frame: InboundFrame) -> Bool {
        let id = ResultAssembler.requestID(body: frame.body)
        switch state.withLock({ $0.channels[id] }) {
        case .stream(let channel)?:
            channel.push(frame)
        case .whole(let pending)?:
            switch pending.take(frame) {
            case .more: break
            case .grant:
                var more = Switchyard_Dbagent_MoreRows()
                more.requestID = id
                if let body: [UInt8] = try? more.serializedBytes() {
                    frames.sendFrame(messageID: DatabaseAgentMessageID.moreRows.rawValue, body: body)
                }
            case .ended: forget(id)
            }
        case nil:
            break
        }
        return true
    }

    private func readAnswers() async {
        var failure = DatabaseAgentClientError(kind: .connectionClosed, message: "the agent closed the connection")
        do {
            // `route` takes every answer on the loop thread: this only waits for the connection to end.
            for try await _ in frames.frames {}
        } catch {
            failure = DatabaseAgentClientError(kind: .connectionClosed, message: "\(error)")
        }
        let receivers = state.withLock { s -> [Receiver] in
            s.closed = failure
            defer { s.channels.removeAll() }
            return Array(s.channels.values)
        }
        for receiver in receivers {
            switch receiver {
            case .stream(let channel): channel.fail(failure)
            case .whole(let pending): pending.end(.failure(failure))
            }
        }
    }

    /// A request whose whole result the reader assembles (``execute(_:rowLimit:timeout:batchRows:)``, ``batch``):
    /// its task waits once, for the outcome.
    final class PendingResult: Sendable {
        enum Progress { case more, grant, ended }

        private struct State {
            var assembler = ResultAssembler()
            var outcome: Result<AgentResult, DatabaseAgentClientError>?
            var waiter: CheckedContinuation<Result<AgentResult, DatabaseAgentClientError>, Never>?
            var cancelled = false
        }
        private let state = Mutex(State())

        /// The task waiting for it was cancelled (and the request should be cancelled at the agent).
        var wasCancelled: Bool { state.withLock { $0.cancelled } }

        /// The reader: one answer frame of the request.
        func take(_ frame: InboundFrame) -> Progress {
            let step = state.withLock { s -> ResultAssembler.Step? in
                s.outcome == nil ? s.assembler.take(messageID: frame.messageID, body: frame.body) : nil
            }
            switch step {
            case nil: return .ended
            case .columns?: return .more
            case .rows(let grant)?: return grant ? .grant : .more
            case .finished(let result)?:
                end(.success(result))
                return .ended
            case .failed(let error)?:
                end(.failure(error))
                return .ended
            }
        }

        /// The outcome (the first one counts); wakes the waiting task.
        func end(_ outcome: Result<AgentResult, DatabaseAgentClientError>) {
            let waiter = state.withLock { s -> CheckedContinuation<Result<AgentResult, DatabaseAgentClientError>,
                                                                   Never>? in
                guard s.outcome == nil else { return nil }
                s.outcome = outcome
                defer { s.waiter = nil }
                return s.waiter
            }
            waiter?.resume(returning: outcome)
        }

        /// Waits for the outcome; a cancelled task ends it with `cancelled`.
        func outcome() async -> Result<AgentResult, DatabaseAgentClientError> {
            await withTaskCancellationHandler {
                await withCheckedContinuation { (c: CheckedContinuation<Result<AgentResult, DatabaseAgentClientError>,
                                                                        Never>) in
                    let ready = state.withLock { s -> Result<AgentResult, DatabaseAgentClientError>? in
                        if let outcome = s.outcome { return outcome }
                        s.waiter = c
                        return nil
                    }
                    if let ready { c.resume(returning: ready) }
                }
            } onCancel: {
                state.withLock { $0.cancelled = true }
                end(.failure(DatabaseAgentClientError(kind: .cancelled, message: "the task was cancelled")))
            }
        }
    }

    /// The answers of one request, waiting for its task.
    final class Channel: Sendable {
        private struct State {
            var queue = Deque<InboundFrame>()
            var waiter: CheckedContinuation<InboundFrame, Error>?
            var failure: DatabaseAgentClientError?
        }
        private let state = Mutex(State())

        func push(_ frame: InboundFrame) {
            let waiter = state.withLock { s -> CheckedContinuation<InboundFrame, Error>? in
                if let w = s.waiter {
                    s.waiter = nil
                    return w
                }
                s.queue.append(frame)
                return nil
            }
            waiter?.resume(returning: frame)
        }

        func pushFront(_ frame: InboundFrame) { state.withLock { $0.queue.prepend(frame) } }

        func fail(_ error: DatabaseAgentClientError) {
            let waiter = state.withLock { s -> CheckedContinuation<InboundFrame, Error>? in
                s.failure = error
                defer { s.waiter = nil }
                return s.waiter
            }
            waiter?.resume(throwing: error)
        }

        func next() async throws -> InboundFrame {
            try await withTaskCancellationHandler {
                try await withCheckedThrowingContinuation { (c: CheckedContinuation<InboundFrame, Error>) in
                    enum Next { case frame(InboundFrame), failure(Error), wait }
                    let next = state.withLock { s -> Next in
                        if let frame = s.queue.popFirst() { return .frame(frame) }
                        if let failure = s.failure { return .failure(failure) }
                        if Task.isCancelled { return .failure(CancellationError()) }
                        s.waiter = c
                        return .wait
                    }
                    switch next {
                    case .frame(let frame): c.resume(returning: frame)
                    case .failure(let error): c.resume(throwing: error)
                    case .wait: break
                    }
                }
            } onCancel: {
                let waiter = state.withLock { s -> CheckedContinuation<InboundFrame, Error>? in
                    defer { s.waiter = nil }
                    return s.waiter
                }
                waiter?.resume(throwing: CancellationError())
            }
        }
    }
}

/// The rows of one statement as they come, a batch (one Rows chunk) at a time; the agent reads the next batch
/// only after this stream handed out the one before (it sends MoreRows then). Iterate once. Dropping the stream
/// before its end cancels the request at the agent.
public final class AgentRowStream: AsyncSequence, Sendable {
    public typealias Element = [[SQLValue]]
    /// The result's columns.
    public let columns: [ColumnInfo]
    private let client: DatabaseAgentClient
    private let id: UInt64
    private let channel: DatabaseAgentClient.Channel
    private let progress: Mutex<(done: AgentResult?, ended: Bool)>

    init(client: DatabaseAgentClient, id: UInt64, channel: DatabaseAgentClient.Channel, columns: [ColumnInfo],
         finished: AgentResult?) {
        self.client = client
        self.id = id
        self.channel = channel
        self.columns = columns
        progress = Mutex((finished, finished != nil))
    }

    deinit {
        if !progress.withLock({ $0.ended }) {
            let (client, id) = (client, id)
            Task { await client.cancelRequest(id) }
        }
    }

    /// The request's Done (affected rows, truncation) once the stream has ended; nil before.
    public var result: AgentResult? { progress.withLock { $0.done } }

    /// Stops the request at the agent.
    public func cancel() async {
        guard !progress.withLock({ s in defer { s.ended = true }; return s.ended }) else { return }
        await client.cancelRequest(id)
    }

    public struct AsyncIterator: AsyncIteratorProtocol {
        let stream: AgentRowStream
        public mutating func next() async throws -> [[SQLValue]]? { try await stream.nextBatch() }
    }

    public func makeAsyncIterator() -> AsyncIterator { AsyncIterator(stream: self) }

    func nextBatch() async throws(DatabaseAgentClientError) -> [[SQLValue]]? {
        if progress.withLock({ $0.ended }) { return nil }
        var assembler = ResultAssembler()
        while true {
            let frame = try await client.next(channel, id: id)
            switch assembler.take(messageID: frame.messageID, body: frame.body) {
            case .columns:
                continue
            case .rows(let grant):
                if grant { try await client.grantChunk(id) }
                return assembler.result.rows
            case .finished(let result):
                client.forget(id)
                progress.withLock { $0 = (result, true) }
                return nil
            case .failed(let error):
                client.forget(id)
                progress.withLock { $0.ended = true }
                throw error
            }
        }
    }
}
