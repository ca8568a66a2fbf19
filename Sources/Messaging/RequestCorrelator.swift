import Synchronization

/// Matches replies to requests by a key (a sequence number, a request id, a route), with a deadline per request:
/// the one request/reply correlator of the clients (load-balancing client, chat client).
///
///     caller:  request(key, deadline) --registers--> send() --awaits--> reply, timeout error, or the close error
///     reader:  resume(key, with: reply)   (every waiter of that key gets it)
///     timer:   expire(now:)               (the owner's loop timer: no task sleeps per request)
///     close:   failAll(error)             (every waiter, and every later request, fails with it)
///
/// The waiter is registered before `send` runs, so a reply that arrives before the caller suspends is kept, not
/// lost. A cancelled caller's waiter is removed and the call throws `CancellationError`. Safe to call from any
/// thread.
public final class RequestCorrelator<Key: Hashable & Sendable, Reply: Sendable>: Sendable {
    private enum Slot {
        /// Registered, the caller has not suspended yet.
        case registered
        /// The caller waits.
        case waiting(CheckedContinuation<Reply, any Error>)
        /// The outcome came before the caller suspended.
        case done(Result<Reply, any Error>)
    }

    private struct Entry {
        let key: Key
        let deadline: UInt64
        let timeoutError: any Error
        var slot: Slot
    }

    /// The requests waiting on one key: almost always one (a sequence number), so no array for it.
    private enum Tokens {
        case one(UInt64)
        case many([UInt64])

        var all: [UInt64] {
            switch self {
            case .one(let token): return [token]
            case .many(let tokens): return tokens
            }
        }
    }

    private struct State {
        var entries: [UInt64: Entry] = [:]
        var byKey: [Key: Tokens] = [:]
        var nextToken: UInt64 = 0
        var closedError: (any Error)?
    }

    private let state = Mutex(State())

    public init() {}

    /// Requests waiting for a reply.
    public var pendingCount: Int { state.withLock { $0.entries.count } }

    /// Registers a request for `key`, runs `send`, and waits for its reply. Throws `timeoutError` once `deadline`
    /// (monotonic nanoseconds, `SystemInfo.monotonicNanoseconds()`) has passed and `expire(now:)` has run, the
    /// error given to `failAll` when the correlator is closed, what `send` throws, or `CancellationError`.
    public func request(_ key: Key, deadline: UInt64, timeoutError: any Error,
                        send: () async throws -> Void) async throws -> Reply {
        let token = try state.withLock { s -> UInt64 in
            if let error = s.closedError { throw error }
            let token = s.nextToken
            s.nextToken &+= 1
            s.entries[token] = Entry(key: key, deadline: deadline, timeoutError: timeoutError, slot: .registered)
            switch s.byKey[key] {
            case nil: s.byKey[key] = .one(token)
            case .one(let first)?: s.byKey[key] = .many([first, token])
            case .many(var tokens)?:
                tokens.append(token)
                s.byKey[key] = .many(tokens)
            }
            return token
        }
        do {
            try await send()
        } catch {
            state.withLock { s in _ = Self.remove(token, from: &s) }
            throw error
        }
        return try await withTaskCancellationHandler {
            try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<Reply, any Error>) in
                let early = state.withLock { s -> Result<Reply, any Error>? in
                    guard let entry = s.entries[token] else { return .failure(CancellationError()) }
                    if case .done(let result) = entry.slot {
                        _ = Self.remove(token, from: &s)
                        return result
                    }
                    s.entries[token]!.slot = .waiting(continuation)
                    return nil
                }
                if let early { continuation.resume(with: early) }
            }
        } onCancel: {
            finish(token, with: .failure(CancellationError()))
        }
    }

    /// Hands `reply` to every request waiting on `key`. Returns how many there were (0: a late or unknown reply).
    @discardableResult
    public func resume(_ key: Key, with reply: Reply) -> Int {
        switch state.withLock({ $0.byKey[key] }) {
        case nil:
            return 0
        case .one(let token)?:
            finish(token, with: .success(reply))
            return 1
        case .many(let tokens)?:
            for token in tokens { finish(token, with: .success(reply)) }
            return tokens.count
        }
    }

    /// Fails every request waiting on `key` with `error`.
    public func fail(_ key: Key, with error: any Error) {
        let tokens = state.withLock { $0.byKey[key]?.all ?? [] }
        for token in tokens { finish(token, with: .failure(error)) }
    }

    /// Fails the requests whose deadline is at or before `now` with their timeout error. Returns how many.
    @discardableResult
    public func expire(now: UInt64) -> Int {
        let late = state.withLock { s in s.entries.filter { $0.value.deadline <= now }.map { ($0.key, $0.value.timeoutError) } }
        for (token, error) in late { finish(token, with: .failure(error)) }
        return late.count
    }

    /// Fails every waiting request with `error`, and every later one at once. Idempotent (the first error stays).
    public func failAll(_ error: any Error) {
        let tokens = state.withLock { s -> [UInt64] in
            if s.closedError == nil { s.closedError = error }
            return Array(s.entries.keys)
        }
        for token in tokens { finish(token, with: .failure(error)) }
    }

    /// Ends one request: resumes its caller, or keeps the outcome for a caller that has not suspended yet.
    private func finish(_ token: UInt64, with result: Result<Reply, any Error>) {
        let continuation = state.withLock { s -> CheckedContinuation<Reply, any Error>? in
            guard let entry = s.entries[token] else { return nil }
            switch entry.slot {
            case .registered:
                s.entries[token]!.slot = .done(result)
                Self.unlink(token, key: entry.key, from: &s)
                return nil
            case .waiting(let continuation):
                _ = Self.remove(token, from: &s)
                return continuation
            case .done:
                return nil
            }
        }
        continuation?.resume(with: result)
    }

    private static func remove(_ token: UInt64, from s: inout State) -> Entry? {
        guard let entry = s.entries.removeValue(forKey: token) else { return nil }
        unlink(token, key: entry.key, from: &s)
        return entry
    }

    /// Takes `token` off its key's list (a finished request gets no second outcome).
    private static func unlink(_ token: UInt64, key: Key, from s: inout State) {
        switch s.byKey[key] {
        case nil:
            return
        case .one(let only)?:
            if only == token { s.byKey[key] = nil }
        case .many(var tokens)?:
            tokens.removeAll { $0 == token }
            s.byKey[key] = tokens.isEmpty ? nil : (tokens.count == 1 ? .one(tokens[0]) : .many(tokens))
        }
    }
}
