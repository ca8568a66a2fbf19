import Synchronization

/// Matches replies to requests by a key (a sequence number, a request id, a route), with a deadline per request:
/// the one request/reply correlator of the clients (load-balancing client, chat client).
///
///     caller:  request(key, deadline) --registers, then send()--> awaits the reply, its timeout, or the close error
///     reader:  resume(key, with: reply)   (every waiter of that key gets it)
///     timer:   expire(now:)               (the owner's loop timer: no task sleeps per request)
///     close:   failAll(error)             (every waiter, and every later request, fails with it)
///
/// The waiter is registered before `send` runs, so a reply that arrives before the caller suspends is not lost. A
/// cancelled caller's waiter is removed and the call throws `CancellationError`. One lock per request and one per
/// reply; no allocation for a key with one waiter. Safe to call from any thread.
///
/// Inlinable throughout, so a client specializes it for its key and reply types: unspecialized, every request
/// looked up the generic metadata of its entries and dictionaries at run time (a third of a one-task async
/// load-balancing call's user time).
public final class RequestCorrelator<Key: Hashable & Sendable, Reply: Sendable>: Sendable {
    @usableFromInline
    struct Entry {
        @usableFromInline let key: Key
        @usableFromInline let deadline: UInt64
        @usableFromInline let timeoutError: any Error
        @usableFromInline let continuation: CheckedContinuation<Reply, any Error>

        @inlinable
        init(key: Key, deadline: UInt64, timeoutError: any Error, continuation: CheckedContinuation<Reply, any Error>) {
            self.key = key
            self.deadline = deadline
            self.timeoutError = timeoutError
            self.continuation = continuation
        }
    }

    /// The requests waiting on one key: almost always one (a sequence number), so no array for it.
    @usableFromInline
    enum Tokens {
        case one(UInt64)
        case many([UInt64])
    }

    @usableFromInline
    struct State {
        @usableFromInline var entries: [UInt64: Entry] = [:]
        @usableFromInline var byKey: [Key: Tokens] = [:]
        /// Requests cancelled before they registered (the cancellation handler ran first).
        @usableFromInline var cancelledEarly: Set<UInt64> = []
        @usableFromInline var closedError: (any Error)?

        @inlinable
        init() {}
    }

    @usableFromInline let state = Mutex(State())
    @usableFromInline let nextToken = Atomic<UInt64>(0)

    @inlinable
    public init() {}

    /// Requests waiting for a reply.
    @inlinable
    public var pendingCount: Int { state.withLock { $0.entries.count } }

    /// Registers a request for `key`, runs `send`, and waits for its reply. Throws `timeoutError` once `deadline`
    /// (monotonic nanoseconds, `SystemInfo.monotonicNanoseconds()`) has passed and `expire(now:)` has run, the
    /// error given to `failAll` when the correlator is closed, what `send` throws, or `CancellationError`.
    @inlinable
    public func request(_ key: Key, deadline: UInt64, timeoutError: any Error,
                        send: () throws -> Void) async throws -> Reply {
        let token = nextToken.wrappingAdd(1, ordering: .relaxed).oldValue
        return try await withTaskCancellationHandler {
            try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<Reply, any Error>) in
                let refused = state.withLock { s -> (any Error)? in
                    if let error = s.closedError { return error }
                    if s.cancelledEarly.remove(token) != nil { return CancellationError() }
                    s.entries[token] = Entry(key: key, deadline: deadline, timeoutError: timeoutError,
                                             continuation: continuation)
                    Self.link(token, key: key, in: &s)
                    return nil
                }
                if let refused { return continuation.resume(throwing: refused) }
                do {
                    try send()
                } catch {
                    finish([token], with: .failure(error))
                }
            }
        } onCancel: {
            let entry = state.withLock { s -> Entry? in
                if let entry = Self.remove(token, from: &s) { return entry }
                s.cancelledEarly.insert(token)
                return nil
            }
            entry?.continuation.resume(throwing: CancellationError())
        }
    }

    /// Hands `reply` to every request waiting on `key`. Returns how many there were (0: a late or unknown reply).
    @inlinable @discardableResult
    public func resume(_ key: Key, with reply: Reply) -> Int {
        let waiting = state.withLock { s -> (Entry?, [Entry]) in
            switch s.byKey.removeValue(forKey: key) {
            case nil:
                return (nil, [])
            case .one(let token)?:
                return (s.entries.removeValue(forKey: token), [])
            case .many(let tokens)?:
                return (nil, tokens.compactMap { s.entries.removeValue(forKey: $0) })
            }
        }
        if let one = waiting.0 {
            one.continuation.resume(returning: reply)
            return 1
        }
        for entry in waiting.1 { entry.continuation.resume(returning: reply) }
        return waiting.1.count
    }

    /// Fails every request waiting on `key` with `error`.
    @inlinable
    public func fail(_ key: Key, with error: any Error) {
        let tokens = state.withLock { s -> [UInt64] in
            switch s.byKey[key] {
            case nil: return []
            case .one(let token)?: return [token]
            case .many(let tokens)?: return tokens
            }
        }
        finish(tokens, with: .failure(error))
    }

    /// Fails the requests whose deadline is at or before `now` with their timeout error. Returns how many.
    @inlinable @discardableResult
    public func expire(now: UInt64) -> Int {
        let late = state.withLock { s -> [Entry] in
            let tokens = s.entries.compactMap { $0.value.deadline <= now ? $0.key : nil }
            return tokens.compactMap { Self.remove($0, from: &s) }
        }
        for entry in late { entry.continuation.resume(throwing: entry.timeoutError) }
        return late.count
    }

    /// Fails every waiting request with `error`, and every later one at once. Idempotent (the first error stays).
    @inlinable
    public func failAll(_ error: any Error) {
        let all = state.withLock { s -> [Entry] in
            if s.closedError == nil { s.closedError = error }
            let entries = Array(s.entries.values)
            s.entries.removeAll()
            s.byKey.removeAll()
            return entries
        }
        for entry in all { entry.continuation.resume(throwing: error) }
    }

    /// Ends the given requests with `result` (those still waiting).
    @usableFromInline
    func finish(_ tokens: [UInt64], with result: Result<Reply, any Error>) {
        let entries = state.withLock { s in tokens.compactMap { Self.remove($0, from: &s) } }
        for entry in entries { entry.continuation.resume(with: result) }
    }

    @usableFromInline
    static func link(_ token: UInt64, key: Key, in s: inout State) {
        switch s.byKey[key] {
        case nil: s.byKey[key] = .one(token)
        case .one(let first)?: s.byKey[key] = .many([first, token])
        case .many(var tokens)?:
            tokens.append(token)
            s.byKey[key] = .many(tokens)
        }
    }

    @usableFromInline
    static func remove(_ token: UInt64, from s: inout State) -> Entry? {
        guard let entry = s.entries.removeValue(forKey: token) else { return nil }
        switch s.byKey[entry.key] {
        case nil:
            break
        case .one(let only)?:
            if only == token { s.byKey[entry.key] = nil }
        case .many(var tokens)?:
            tokens.removeAll { $0 == token }
            s.byKey[entry.key] = tokens.isEmpty ? nil : (tokens.count == 1 ? .one(tokens[0]) : .many(tokens))
        }
        return entry
    }
}
