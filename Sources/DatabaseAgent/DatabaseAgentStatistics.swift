import DatabaseAgentProtocol
import Messaging

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
    private struct PerToken: Sendable {
        let label: String
        let requests, rows, errors, rateLimited: MeteredCount

        init(label: String) {
            self.label = label
            func count(_ name: String) -> MeteredCount {
                MeteredCount("switchyard_dbagent_\(name)_total", dimensions: [("token", label)])
            }
            requests = count("requests")
            rows = count("rows")
            errors = count("errors")
            rateLimited = count("rate_limited")
        }
    }

    private let perToken: [PerToken]
    /// Requests open now (``DatabaseAgentConfiguration/maxRequestsInFlight`` at most).
    let inFlight = MeteredSlots("switchyard_dbagent_in_flight")
    /// Transactions open now (``DatabaseAgentConfiguration/maxTransactions`` at most).
    let transactions = MeteredSlots("switchyard_dbagent_transactions_open")
    let unauthorized = MeteredCount("switchyard_dbagent_unauthorized_total")
    let authClosed = MeteredCount("switchyard_dbagent_auth_closed_total")
    let busy = MeteredCount("switchyard_dbagent_busy_total")
    let creditTimeouts = MeteredCount("switchyard_dbagent_credit_timeouts_total")
    let rowsRead = MeteredCount("switchyard_dbagent_rows_read_total")
    let transactionsRolledBack = MeteredCount("switchyard_dbagent_transactions_rolled_back_total")

    init(tokenLabels: [String]) {
        perToken = tokenLabels.map(PerToken.init)
    }

    var snapshot: DatabaseAgentStatistics {
        var tokens: [String: DatabaseAgentStatistics.TokenCounters] = [:]
        for t in perToken {
            tokens[t.label] = .init(requests: t.requests.value, rows: t.rows.value, errors: t.errors.value,
                                    rateLimited: t.rateLimited.value)
        }
        return DatabaseAgentStatistics(
            tokens: tokens, unauthorized: unauthorized.value, authClosed: authClosed.value, busy: busy.value,
            creditTimeouts: creditTimeouts.value, inFlight: inFlight.value, rowsRead: rowsRead.value,
            transactionsOpen: transactions.value, transactionsRolledBack: transactionsRolledBack.value)
    }

    func request(_ token: Int) {
        perToken[token].requests.add()
    }

    func rows(_ token: Int, _ n: Int) {
        perToken[token].rows.add(n)
    }

    /// An error answer of `kind` (to token `token`, when known).
    func error(_ kind: Switchyard_Dbagent_ErrorKind, token: Int?) {
        if let token {
            perToken[token].errors.add()
            if kind == .rateLimited { perToken[token].rateLimited.add() }
        }
        switch kind {
        case .unauthorized: unauthorized.add()
        case .busy: busy.add()
        default: break
        }
    }
}
