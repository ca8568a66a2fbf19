import LarsWire
import DequeModule
import Reactor
import SwiftProtobuf
import Synchronization

/// One frame received by an `AsyncFrameClient`, copied out of the loop.
public struct InboundFrame: Sendable, Equatable {
    public let messageID: Int32
    public let body: [UInt8]

    public init(messageID: Int32, body: [UInt8]) {
        self.messageID = messageID
        self.body = body
    }

    /// Decodes the body as a protobuf message.
    public func decode<M: SwiftProtobuf.Message>(as type: M.Type) throws -> M { try M(serializedBytes: body) }
}

/// Errors of the async client.
public enum AsyncClientError: Error, Equatable, Sendable, CustomStringConvertible {
    /// The connection is closed; nothing more can be sent.
    case closed
    /// The peer sent bytes that are not a valid frame; the connection was closed.
    case protocolError(String)

    public var description: String {
        switch self {
        case .closed: return "the connection is closed"
        case .protocolError(let reason): return "protocol error: \(reason)"
        }
    }
}

/// A framed TCP client for Swift concurrency: `connect`, `send`, an `AsyncSequence` of inbound frames, `close`.
///
/// The inbound buffer is bounded: when `bufferCapacity` frames wait unread, the client stops reading from the
/// socket (the peer's TCP window fills and it slows down) until the consumer has taken half of them. One
/// consumer at a time iterates `frames`.
public final class AsyncFrameClient: Sendable {
    private let client: TCPClient
    private let inbox: Inbox
    private let writer = GatheringWriter()

    private init(client: TCPClient, inbox: Inbox) {
        self.client = client
        self.inbox = inbox
    }

    /// Connects to `host:port` with the loop doing the I/O. Throws the connect error (refused, timeout, bad host).
    /// `onFrame`, when given, sees every inbound frame first, on the loop thread; the frames it takes (returns `true`
    /// for) skip `frames` (a client that routes answers to waiting requests itself: no task hop per frame).
    public static func connect(
        host: String = "127.0.0.1", port: Int, loop: EventLoop, bufferCapacity: Int = 256,
        maxBodyLength: Int = FrameParser.defaultMaxBodyLength, connectTimeout: Duration = .seconds(5),
        onFrame: (@Sendable (InboundFrame) -> Bool)? = nil
    ) async throws -> AsyncFrameClient {
        let inbox = Inbox(capacity: max(2, bufferCapacity))
        let waiter = ConnectWaiter()
        let decoder = FrameDecoder(maxBodyLength: maxBodyLength)
        let client = try TCPClient(
            loop: loop,
            configuration: ClientConfiguration(host: host, port: port, connectTimeout: connectTimeout, reconnect: false),
            callbacks: ConnectionCallbacks(
                onConnect: { connection in
                    inbox.attach(connection)
                    waiter.finish(.success(()))
                },
                onData: { connection, bytes in
                    let (consumed, stop) = decoder.decode(bytes.readableView) { id, body in
                        if id != ReservedMessageID.heartbeat {
                            let frame = InboundFrame(messageID: id, body: Array(body))
                            if onFrame?(frame) != true { inbox.deliver(frame) }
                        }
                        return true
                    }
                    if case .invalid(let error) = stop {
                        bytes.consumeAll()
                        inbox.fail(AsyncClientError.protocolError("\(error)"))
                        connection.forceClose()
                    } else {
                        bytes.moveReaderIndex(forwardBy: consumed)
                    }
                },
                onClose: { connection in
                    inbox.finish(error: connection.closeReason)
                }),
            onConnectFailed: { error in waiter.finish(.failure(error)) })
        try await withTaskCancellationHandler {
            try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<Void, Error>) in
                waiter.set(continuation)
                client.connect()
            }
        } onCancel: {
            client.disconnect()
            waiter.finish(.failure(CancellationError()))
        }
        return AsyncFrameClient(client: client, inbox: inbox)
    }

    /// Sends one frame. Throws `AsyncClientError.closed` when the connection is gone.
    ///
    /// From a task on the connection's loop (`Task(executorPreference: loop)`) the frame is written at the end of
    /// the loop's iteration together with the frames its other tasks sent meanwhile: callers resumed by one read
    /// of answers send their next requests in one system call (and the peer reads them in one). From elsewhere it
    /// is posted to the loop. Frames leave in the order they were sent either way.
    public func send(messageID: Int32, body: [UInt8]) async throws {
        guard sendFrame(messageID: messageID, body: body) else { throw AsyncClientError.closed }
    }

    /// Sends one frame without waiting, from any thread (the loop's too, gathered as ``send(messageID:body:)``
    /// says); `false` when the connection is gone.
    @discardableResult
    public func sendFrame(messageID: Int32, body: [UInt8]) -> Bool {
        guard let connection = client.connection, inbox.isOpen else { return false }
        let writer = self.writer
        if connection.loop.inLoopThread {
            writer.append(messageID: messageID, body: body, flushingTo: connection)
        } else {
            connection.loop.execute {
                writer.append(messageID: messageID, body: body, flushingTo: connection)
            }
        }
        return true
    }

    /// Sends a protobuf message as the body of a frame.
    public func send<M: SwiftProtobuf.Message>(_ message: M, id: some FrameMessageID) async throws {
        try await send(messageID: id.rawValue, body: try message.serializedBytes())
    }

    /// The inbound frames, in order; ends when the connection closes (throws if it closed on an error).
    public var frames: Frames { Frames(inbox: inbox) }

    /// Closes after flushing what was sent, and waits until the connection is closed.
    public func close() async {
        client.disconnect()
        await inbox.waitClosed()
    }

    /// Frames waiting to be consumed.
    public var bufferedFrames: Int { inbox.count }

    /// The inbound frames as an `AsyncSequence`.
    public struct Frames: AsyncSequence, Sendable {
        public typealias Element = InboundFrame
        let inbox: Inbox

        public struct AsyncIterator: AsyncIteratorProtocol {
            let inbox: Inbox
            public mutating func next() async throws -> InboundFrame? { try await inbox.next() }
        }

        public func makeAsyncIterator() -> AsyncIterator { AsyncIterator(inbox: inbox) }
    }
}

/// Resumes the connect continuation exactly once.
private final class ConnectWaiter: Sendable {
    private let state = Mutex<(continuation: CheckedContinuation<Void, Error>?, result: Result<Void, Error>?)>((nil, nil))

    func set(_ continuation: CheckedContinuation<Void, Error>) {
        let ready: Result<Void, Error>? = state.withLock { s in
            if let r = s.result { return r }
            s.continuation = continuation
            return nil
        }
        if let ready { continuation.resume(with: ready) }
    }

    func finish(_ result: Result<Void, Error>) {
        let c: CheckedContinuation<Void, Error>? = state.withLock { s in
            guard s.result == nil else { return nil }
            s.result = result
            defer { s.continuation = nil }
            return s.continuation
        }
        c?.resume(with: result)
    }
}

/// The bounded inbound queue between the loop and the consumer.
final class Inbox: @unchecked Sendable {
    // @unchecked Sendable: `connection` is written once on the loop before any frame is delivered and is only used
    // through `loop.execute`; all other state is in the Mutex. It is weak: the connection's callbacks hold this
    // inbox, so a strong reference back would keep both (and the connection's loop) alive for good. While the
    // connection is open its loop and client hold it.
    struct State {
        var queue = Deque<InboundFrame>()
        var waiter: CheckedContinuation<InboundFrame?, Error>?
        var closeWaiters: [CheckedContinuation<Void, Never>] = []
        var finished = false
        var error: Error?
        var readingPaused = false
    }

    let capacity: Int
    private let state = Mutex(State())
    private weak var connection: TCPConnection?

    init(capacity: Int) { self.capacity = capacity }

    var count: Int { state.withLock { $0.queue.count } }
    var isOpen: Bool { state.withLock { !$0.finished } }

    func attach(_ connection: TCPConnection) { self.connection = connection }

    /// Loop thread.
    func deliver(_ frame: InboundFrame) {
        let (waiter, pause): (CheckedContinuation<InboundFrame?, Error>?, Bool) = state.withLock { s in
            if let w = s.waiter {
                s.waiter = nil
                return (w, false)
            }
            s.queue.append(frame)
            if s.queue.count >= capacity && !s.readingPaused {
                s.readingPaused = true
                return (nil, true)
            }
            return (nil, false)
        }
        waiter?.resume(returning: frame)
        if pause { connection?.setReadingEnabled(false) }
    }

    /// Loop thread: a protocol error ends the stream with an error.
    func fail(_ error: Error) {
        state.withLock { if $0.error == nil { $0.error = error } }
    }

    /// Loop thread: the connection closed.
    func finish(error: Error?) {
        let (waiter, closeWaiters, failure): (CheckedContinuation<InboundFrame?, Error>?, [CheckedContinuation<Void, Never>], Error?) =
            state.withLock { s in
                s.finished = true
                if s.error == nil, let error { s.error = error }
                let w = s.queue.isEmpty ? s.waiter : nil
                if w != nil { s.waiter = nil }
                let c = s.closeWaiters
                s.closeWaiters = []
                return (w, c, s.error)
            }
        if let waiter {
            if let failure { waiter.resume(throwing: failure) } else { waiter.resume(returning: nil) }
        }
        for c in closeWaiters { c.resume() }
    }

    func waitClosed() async {
        await withCheckedContinuation { (c: CheckedContinuation<Void, Never>) in
            let done = state.withLock { s -> Bool in
                if s.finished { return true }
                s.closeWaiters.append(c)
                return false
            }
            if done { c.resume() }
        }
    }

    func next() async throws -> InboundFrame? {
        try await withTaskCancellationHandler {
            try await withCheckedThrowingContinuation { (c: CheckedContinuation<InboundFrame?, Error>) in
                enum Action {
                    case value(InboundFrame, resume: Bool)
                    case end(Error?)
                    case cancelled
                    case wait
                }
                let action: Action = state.withLock { s in
                    if let f = s.queue.popFirst() {
                        var resume = false
                        if s.readingPaused && s.queue.count <= capacity / 2 {
                            s.readingPaused = false
                            resume = true
                        }
                        return .value(f, resume: resume)
                    }
                    if s.finished { return .end(s.error) }
                    if Task.isCancelled { return .cancelled }
                    s.waiter = c
                    return .wait
                }
                switch action {
                case .value(let f, let resume):
                    if resume, let connection {
                        // Re-check on the loop: the loop may have paused again (a newer decision) before this task
                        // runs, and a stale resume would leave reading on while the state says paused, so the
                        // buffer would never be bounded again.
                        connection.loop.execute { [self] in
                            if !state.withLock({ $0.readingPaused }) { connection.setReadingEnabled(true) }
                        }
                    }
                    c.resume(returning: f)
                case .end(let error):
                    if let error { c.resume(throwing: error) } else { c.resume(returning: nil) }
                case .cancelled:
                    c.resume(throwing: CancellationError())
                case .wait:
                    break
                }
            }
        } onCancel: {
            let w = state.withLock { s -> CheckedContinuation<InboundFrame?, Error>? in
                defer { s.waiter = nil }
                return s.waiter
            }
            w?.resume(throwing: CancellationError())
        }
    }
}

/// The frames an `AsyncFrameClient` sent during one iteration of its loop, written in one send at the iteration's
/// end (``EventLoop/atEndOfIteration(_:)``), or at once when ``maxGatheredBytes`` are gathered; past that the
/// connection's own output queue and high-water mark apply.
///
/// `@unchecked Sendable`: `pending` and `flushRegistered` are touched on the connection's loop only (`append` runs
/// there: called on it, or posted to it).
private final class GatheringWriter: @unchecked Sendable {
    private var pending: [UInt8] = []
    private var flushRegistered = false

    /// Bytes gathered at most: past this the frames go out at once (a task that sends many frames without
    /// suspending does not grow the buffer without bound before the iteration ends).
    static let maxGatheredBytes = 64 << 10

    func append(messageID: Int32, body: [UInt8], flushingTo connection: TCPConnection) {
        var header = FrameParser.header(messageID: messageID, bodyLength: body.count)
        withUnsafeBytes(of: &header) { pending.append(contentsOf: $0) }
        pending.append(contentsOf: body)
        if pending.count >= Self.maxGatheredBytes {
            flush(connection)
            return
        }
        guard !flushRegistered else { return }
        flushRegistered = true
        connection.loop.atEndOfIteration { [self] in
            flushRegistered = false
            flush(connection)
        }
    }

    private func flush(_ connection: TCPConnection) {
        guard !pending.isEmpty else { return }
        _ = pending.withUnsafeBytes { connection.sendInLoop($0) }
        pending.removeAll(keepingCapacity: pending.capacity <= Self.maxGatheredBytes * 2)
    }
}
