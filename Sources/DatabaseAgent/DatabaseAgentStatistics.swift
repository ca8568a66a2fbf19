import Metrics
import Synchronization

/// A snapshot of a database agent's counters (``DatabaseAgentServer/statistics``).
public struct DatabaseAgentStatistics: Sendable, Hashable, CustomStringConvertible {
    /// Counters of one access-file token.
    public struct TokenCounters: Sendable, Hashable {
        /// Requests accepted (authorized, within the rate, run or refused after that).
        public var requests: Int
        /// Rows sent.
        public var rows: Int
        /// Requests that ended in an error (rate limited ones included).
        public var errors: Int
        /// Requests refused by the token's `rate=`.
        public var rateLimited: Int
    }

    /// By token name (`name=`, or `line-L`).
    public var tokens: [String: TokenCounters]
    /// Requests with no valid token.
    public var unauthorized: Int
    /// Connections closed after ``DatabaseAgentConfiguration/maxAuthFailures`` such requests.
    public var authClosed: Int
    /// Requests refused `BUSY` (too many open on the connection or in the agent, or no pooled connection).
    public var busy: Int
    /// Requests ended because their caller granted no chunk within ``DatabaseAgentConfiguration/creditTimeout``.
    public var creditTimeouts: Int
    /// Requests open now.
    public var inFlight: Int
    /// Rows the runner handed to the agent (read from the database), all requests together.
    public var rowsRead: Int
    /// Transactions open now (each holds a pooled connection).
    public var transactionsOpen: Int = 0
    /// Transactions the agent rolled back on its own: open past ``DatabaseAgentConfiguration/transactionTimeout``,
    /// or their caller's connection closed.
    public var transactionsRolledBack: Int = 0

    public var description: String {
        let perToken = tokens.keys.sorted().map { name in
            let t = tokens[name]!
            return "\(name): \(t.requests) requests, \(t.rows) rows, \(t.errors) errors, \(t.rateLimited) rate limited"
        }.joined(separator: "; ")
        return "\(inFlight) in flight, \(rowsRead) rows read, \(unauthorized) unauthorized (\(authClosed) closed), " +
            "\(busy) busy, \(creditTimeouts) credit timeouts, \(transactionsOpen) transactions open "
            + "(\(transactionsRolledBack) rolled back by the agent); \(perToken)"
    }
}

/// The live counters behind ``DatabaseAgentStatistics``, and the same counts through swift-metrics
/// (`switchyard_dbagent_*_total`, dimension `token` = the token's name; the executable picks the backend). Safe
/// from any thread; the metric handlers are made once.
final class AgentCounters: Sendable {
    private final class PerToken: Sendable {
        let label: String
        let requests = Atomic<Int>(0)
        let rows = Atomic<Int>(0)
        let errors = Atomic<Int>(0)
        let rateLimited = Atomic<Int>(0)
        let requestsMetric: Counter
        let rowsMetric: Counter
        let errorsMetric: Counter
        let rateLimitedMetric: Counter

        init(label: String) {
            self.label = label
            let dimensions = [("token", label)]
            requestsMetric = Counter(label: "switchyard_dbagent_requests_total", dimensions: dimensions)
            rowsMetric = Counter(label: "switchyard_dbagent_rows_total", dimensions: dimensions)
            errorsMetric = Counter(label: "switchyard_dbagent_errors_total", dimensions: dimensions)
            rateLimitedMetric = Counter(label: "switchyard_dbagent_rate_limited_total", dimensions: dimensions)
        }
    }

    private let perToken: [PerToken]
    let inFlight = Atomic<Int>(0)
    private let unauthorized = Atomic<Int>(0)
    private let authClosed = Atomic<Int>(0)
    private let busy = Atomic<Int>(0)
    private let creditTimeouts = Atomic<Int>(0)
    private let rowsRead = Atomic<Int>(0)
    private let unauthorizedMetric = Counter(label: "switchyard_dbagent_unauthorized_total")
    private let authClosedMetric = Counter(label: "switchyard_dbagent_auth_closed_total")
    private let busyMetric = Counter(label: "switchyard_dbagent_busy_total")
    private let creditTimeoutsMetric = Counter(label: "switchyard_dbagent_credit_timeouts_total")
    private let rowsReadMetric = Counter(label: "switchyard_dbagent_rows_read_total")
    private let inFlightMetric = Gauge(label: "switchyard_dbagent_in_flight")
    private let transactionsOpen = Atomic<Int>(0)
    private let transactionsRolledBack = Atomic<Int>(0)
    private let transactionsOpenMetric = Gauge(label: "switchyard_dbagent_transactions_open")
    private let transactionsRolledBackMetric = Counter(label: "switchyard_dbagent_transactions_rolled_back_total")

    init(tokenLabels: [String]) {
        perToken = tokenLabels.map(PerToken.init)
    }

    var snapshot: DatabaseAgentStatistics {
        var tokens: [String: DatabaseAgentStatistics.TokenCounters] = [:]
        for t in perToken {
            tokens[t.label] = .init(requests: t.requests.load(ordering: .relaxed),
                                    rows: t.rows.load(ordering: .relaxed),
                                    errors: t.errors.load(ordering: .relaxed),
                                    rateLimited: t.rateLimited.load(ordering: .relaxed))
        }
        return DatabaseAgentStatistics(
            tokens: tokens, unauthorized: unauthorized.load(ordering: .relaxed),
            authClosed: authClosed.load(ordering: .relaxed), busy: busy.load(ordering: .relaxed),
            creditTimeouts: creditTimeouts.load(ordering: .relaxed), inFlight: inFlight.load(ordering: .relaxed),
            rowsRead: rowsRead.load(ordering: .relaxed), transactionsOpen: transactionsOpen.load(ordering: .relaxed),
            transactionsRolledBack: transactionsRolledBack.load(ordering: .relaxed))
    }

    /// Takes a transaction slot; false (nothing taken) when `limit` are taken.
    func takeTransaction(limit: Int) -> Bool {
        let now = transactionsOpen.wrappingAdd(1, ordering: .relaxed).newValue
        if now > limit {
            transactionsOpen.wrappingSubtract(1, ordering: .relaxed)
            return false
        }
        transactionsOpenMetric.record(now)
        return true
    }

    func releaseTransaction() {
        transactionsOpenMetric.record(transactionsOpen.wrappingSubtract(1, ordering: .relaxed).newValue)
    }

    func transactionRolledBack() {
        transactionsRolledBack.wrappingAdd(1, ordering: .relaxed)
        transactionsRolledBackMetric.increment()
    }

    /// Takes an in-flight slot; false (nothing taken) when `limit` are taken.
    func takeInFlight(limit: Int) -> Bool {
        let now = inFlight.wrappingAdd(1, ordering: .relaxed).newValue
        if now > limit {
            inFlight.wrappingSubtract(1, ordering: .relaxed)
            return false
        }
        inFlightMetric.record(now)
        return true
    }

    func releaseInFlight() {
        inFlightMetric.record(inFlight.wrappingSubtract(1, ordering: .relaxed).newValue)
    }

    func request(_ token: Int) {
        perToken[token].requests.wrappingAdd(1, ordering: .relaxed)
        perToken[token].requestsMetric.increment()
    }

    func rows(_ token: Int, _ n: Int) {
        perToken[token].rows.wrappingAdd(n, ordering: .relaxed)
        perToken[token].rowsMetric.increment(by: n)
    }

    func rowsRead(_ n: Int) {
        rowsRead.wrappingAdd(n, ordering: .relaxed)
        rowsReadMetric.increment(by: n)
    }

    /// An error answer of `kind` (to token `token`, when known).
    func error(_ kind: Switchyard_Dbagent_ErrorKind, token: Int?) {
        if let token {
            perToken[token].errors.wrappingAdd(1, ordering: .relaxed)
            perToken[token].errorsMetric.increment()
            if kind == .rateLimited {
                perToken[token].rateLimited.wrappingAdd(1, ordering: .relaxed)
                perToken[token].rateLimitedMetric.increment()
            }
        }
        switch kind {
        case .unauthorized:
            unauthorized.wrappingAdd(1, ordering: .relaxed)
            unauthorizedMetric.increment()
        case .busy:
            busy.wrappingAdd(1, ordering: .relaxed)
            busyMetric.increment()
        default:
            break
        }
    }

    func creditTimeout() {
        creditTimeouts.wrappingAdd(1, ordering: .relaxed)
        creditTimeoutsMetric.increment()
    }

    func closedForAuth() {
        authClosed.wrappingAdd(1, ordering: .relaxed)
        authClosedMetric.increment()
    }
}
