import Metrics
import Synchronization

/// Counters of a chat server: a snapshot for tests and tools, and the same counts through swift-metrics
/// (`switchyard_chat_*_total`, label `service=chat`; the executable chooses the metrics backend). Safe to read from
/// any thread.
public final class ChatStatistics: Sendable {
    private let connections = Atomic<Int>(0)
    private let logins = Atomic<Int>(0)
    private let delivered = Atomic<Int>(0)
    private let slowConsumers = Atomic<Int>(0)
    private let loginFailures = Atomic<Int>(0)
    private let limitErrors = Atomic<Int>(0)
    private let busyErrors = Atomic<Int>(0)
    private let registrationLimits = Atomic<Int>(0)
    private let historyRefusals = Atomic<Int>(0)
    private let historyLosses = Atomic<Int>(0)

    private let metrics: MetricCounters

    /// The swift-metrics counters, made once (nothing is allocated per message).
    private struct MetricCounters: Sendable {
        let connections: Counter
        let logins: Counter
        let delivered: Counter
        let slowConsumers: Counter
        let loginFailures: Counter
        let limitRejections: Counter
        let busyRejections: Counter
        let registrationsRateLimited: Counter
        let historyRefused: Counter
        let historyLost: Counter

        init() {
            let dimensions = [("service", "chat")]
            connections = Counter(label: "switchyard_chat_connections_total", dimensions: dimensions)
            logins = Counter(label: "switchyard_chat_logins_total", dimensions: dimensions)
            delivered = Counter(label: "switchyard_chat_messages_delivered_total", dimensions: dimensions)
            slowConsumers = Counter(label: "switchyard_chat_slow_consumers_cut_off_total", dimensions: dimensions)
            loginFailures = Counter(label: "switchyard_chat_login_failures_total", dimensions: dimensions)
            limitRejections = Counter(label: "switchyard_chat_limit_rejections_total", dimensions: dimensions)
            busyRejections = Counter(label: "switchyard_chat_busy_rejections_total", dimensions: dimensions)
            registrationsRateLimited = Counter(label: "switchyard_chat_registrations_rate_limited_total",
                                               dimensions: dimensions)
            historyRefused = Counter(label: "switchyard_chat_history_refused_total", dimensions: dimensions)
            historyLost = Counter(label: "switchyard_chat_history_lost_total", dimensions: dimensions)
        }
    }

    init() {
        metrics = MetricCounters()
    }

    /// Connections accepted.
    public var connectionsAccepted: Int { connections.load(ordering: .relaxed) }
    /// Successful logins.
    public var successfulLogins: Int { logins.load(ordering: .relaxed) }
    /// Room and private messages written to members' connections.
    public var messagesDelivered: Int { delivered.load(ordering: .relaxed) }
    /// Connections cut off because their output queue passed `maxQueuedOutputBytes`.
    public var slowConsumersDisconnected: Int { slowConsumers.load(ordering: .relaxed) }
    /// Logins refused for a wrong name or password (rate-limited attempts not included).
    public var failedLogins: Int { loginFailures.load(ordering: .relaxed) }
    /// Requests refused by a limit (size, rate, rooms per user, room name length).
    public var limitRejections: Int { limitErrors.load(ordering: .relaxed) }
    /// Requests refused at once as busy: their connection or source address had too many in progress.
    public var busyRejections: Int { busyErrors.load(ordering: .relaxed) }
    /// Registrations refused by their source address's rate limit.
    public var registrationsRateLimited: Int { registrationLimits.load(ordering: .relaxed) }
    /// Room messages refused because the history queue was full (the sender was told to retry).
    public var historyRefused: Int { historyRefusals.load(ordering: .relaxed) }
    /// Room messages accepted whose history write failed on every attempt (logged).
    public var historyLost: Int { historyLosses.load(ordering: .relaxed) }

    /// Adds `n` to a counter. Safe to call from any thread.
    func add(_ counter: ChatCounter, _ n: Int) {
        switch counter {
        case .connection:
            connections.wrappingAdd(n, ordering: .relaxed)
            metrics.connections.increment(by: n)
        case .login:
            logins.wrappingAdd(n, ordering: .relaxed)
            metrics.logins.increment(by: n)
        case .delivered:
            delivered.wrappingAdd(n, ordering: .relaxed)
            metrics.delivered.increment(by: n)
        case .slowConsumerCutOff:
            slowConsumers.wrappingAdd(n, ordering: .relaxed)
            metrics.slowConsumers.increment(by: n)
        case .failedLogin:
            loginFailures.wrappingAdd(n, ordering: .relaxed)
            metrics.loginFailures.increment(by: n)
        case .limitRejection:
            limitErrors.wrappingAdd(n, ordering: .relaxed)
            metrics.limitRejections.increment(by: n)
        case .busyRejection:
            busyErrors.wrappingAdd(n, ordering: .relaxed)
            metrics.busyRejections.increment(by: n)
        case .registrationRateLimited:
            registrationLimits.wrappingAdd(n, ordering: .relaxed)
            metrics.registrationsRateLimited.increment(by: n)
        case .historyRefused:
            historyRefusals.wrappingAdd(n, ordering: .relaxed)
            metrics.historyRefused.increment(by: n)
        case .historyLost:
            historyLosses.wrappingAdd(n, ordering: .relaxed)
            metrics.historyLost.increment(by: n)
        }
    }
}
