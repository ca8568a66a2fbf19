import Messaging

/// Counters of a chat server: a snapshot for tests and tools, and the same counts through swift-metrics
/// (`switchyard_chat_*_total`, label `service=chat`; the executable chooses the metrics backend). Safe to read from
/// any thread.
public final class ChatStatistics: Sendable {
    /// One per `ChatCounter`, in its order.
    private let counts: [MeteredCount]

    init() {
        counts = ChatCounter.allCases.map { MeteredCount($0.metricLabel, dimensions: [("service", "chat")]) }
    }

    private subscript(_ counter: ChatCounter) -> Int { counts[counter.rawValue].value }

    /// Connections accepted.
    public var connectionsAccepted: Int { self[.connection] }
    /// Successful logins.
    public var successfulLogins: Int { self[.login] }
    /// Room and private messages written to members' connections.
    public var messagesDelivered: Int { self[.delivered] }
    /// Connections cut off because their output queue passed `maxQueuedOutputBytes`.
    public var slowConsumersDisconnected: Int { self[.slowConsumerCutOff] }
    /// Logins refused for a wrong name or password (rate-limited attempts not included).
    public var failedLogins: Int { self[.failedLogin] }
    /// Requests refused by a limit (size, rate, rooms per user, room name length).
    public var limitRejections: Int { self[.limitRejection] }
    /// Requests refused at once as busy: their connection or source address had too many in progress.
    public var busyRejections: Int { self[.busyRejection] }
    /// Registrations refused by their source address's rate limit.
    public var registrationsRateLimited: Int { self[.registrationRateLimited] }
    /// Room messages refused because the history queue was full (the sender was told to retry).
    public var historyRefused: Int { self[.historyRefused] }
    /// Room messages accepted whose history write failed on every attempt (logged).
    public var historyLost: Int { self[.historyLost] }

    /// Adds `n` to a counter. Safe to call from any thread.
    func add(_ counter: ChatCounter, _ n: Int) {
        counts[counter.rawValue].add(n)
    }
}

extension ChatCounter {
    /// Its swift-metrics counter.
    var metricLabel: String {
        switch self {
        case .connection: "switchyard_chat_connections_total"
        case .login: "switchyard_chat_logins_total"
        case .delivered: "switchyard_chat_messages_delivered_total"
        case .slowConsumerCutOff: "switchyard_chat_slow_consumers_cut_off_total"
        case .failedLogin: "switchyard_chat_login_failures_total"
        case .limitRejection: "switchyard_chat_limit_rejections_total"
        case .busyRejection: "switchyard_chat_busy_rejections_total"
        case .registrationRateLimited: "switchyard_chat_registrations_rate_limited_total"
        case .historyRefused: "switchyard_chat_history_refused_total"
        case .historyLost: "switchyard_chat_history_lost_total"
        }
    }
}
