import LoadBalanceClient
import LoadBalancing
import Reactor

/// What the proxy does for one client connection, from its accept to the report of its outcome: a pure state
/// machine that takes events (the agent's answer, the connect's result, the tunnel's end) and returns the actions
/// to perform. No sockets, no clock: ``ProxyServer`` performs the actions on the connection's loop.
///
///     accepted --askAgent--> agent answers a host --connect--> connected --startTunnel--> tunnel ends --report
///                 ^                                 |
///                 +--- connect failed: report the host failed, ask again (up to `attempts` hosts) ---+
///
/// A failed connect (refused, timed out) is reported as a failure and the agent asked again without the key, so the
/// next host is tried, up to `attempts` hosts; a host that failed once for this connection is not tried again (when
/// the agent offers it, it is asked once more, up to `maxAsks` requests in all). A tunnel that ends after the
/// backend answered, or by the client's doing, is the backend's success; a backend that resets, or stays silent
/// until the idle timeout, before sending any byte is its failure.
public struct ProxySession: Sendable {
    public enum Event: Sendable, Equatable {
        /// The client's connection was accepted.
        case accepted
        /// The agent answered a GetHost.
        case agentAnswered(GetHostResult)
        /// The agent did not answer (timeout, closed, a bad reply).
        case agentFailed(String)
        /// The connect to the host asked for succeeded.
        case connected
        /// The connect failed (refused, unreachable, timed out).
        case connectFailed(String)
        /// The tunnel ended.
        case tunnelEnded(TunnelOutcome)
    }

    public enum Action: Sendable, Equatable {
        /// Ask the agent for a host, by this key (nil: the agent's own order).
        case askAgent(key: [UInt8]?)
        /// Connect to this host (with the connect timeout).
        case connect(Host)
        /// Join the client and the connected host.
        case startTunnel(Host)
        /// Tell the agent how the call to this host went.
        case report(Host, success: Bool)
        /// Close the client: no backend for it.
        case refuse(Refusal)
        /// The session is over (the proxy forgets it).
        case finished
    }

    /// Why a client got no backend.
    public enum Refusal: Sendable, Equatable, CustomStringConvertible {
        /// The agent had no host (overloaded, unknown module, its own error).
        case noHost(GetHostResult)
        /// The agent did not answer.
        case agentUnavailable(String)
        /// Every host tried refused the connect or did not accept it in time.
        case backendsFailed(attempts: Int, lastError: String)

        public var description: String {
            switch self {
            case .noHost(let result): return "the agent has no host (\(result))"
            case .agentUnavailable(let text): return "the agent did not answer: \(text)"
            case .backendsFailed(let attempts, let error):
                return "\(attempts) backend\(attempts == 1 ? "" : "s") failed to connect, last: \(error)"
            }
        }
    }

    public enum State: Sendable, Equatable {
        case new
        /// Waiting for the agent's answer to the `asks`-th GetHost.
        case asking(asks: Int)
        case connecting(Host, asks: Int)
        case relaying(Host)
        case done
    }

    public private(set) var state: State = .new
    /// Hosts whose connect failed for this session.
    public private(set) var failedHosts: [Host] = []
    public let key: [UInt8]?
    /// Hosts to try at most.
    public let attempts: Int
    /// GetHost requests at most: the agent may offer a host that failed already (it does not know yet, or other
    /// connections' requests took its other hosts' turns), which is skipped and asked again.
    public var maxAsks: Int { attempts * 4 }

    /// - Parameters:
    ///   - key: The affinity key of the first request (the client's address with `--affinity client-ip`).
    ///   - attempts: Hosts to try at most (at least 1).
    public init(key: [UInt8]?, attempts: Int) {
        self.key = key
        self.attempts = max(1, attempts)
    }

    /// The actions for `event`, in order. An event the current state does not expect (a late answer) is ignored.
    public mutating func handle(_ event: Event) -> [Action] {
        switch (state, event) {
        case (.new, .accepted):
            state = .asking(asks: 1)
            return [.askAgent(key: key)]
        case (.asking(let asks), .agentAnswered(let result)):
            guard let host = result.host else { return refuse(.noHost(result)) }
            if failedHosts.contains(host) {
                // A host that already failed for this connection: ask again, a bounded number of times.
                if asks < maxAsks {
                    state = .asking(asks: asks + 1)
                    return [.askAgent(key: nil)]
                }
                return refuse(.backendsFailed(attempts: failedHosts.count, lastError: "no other host"))
            }
            state = .connecting(host, asks: asks)
            return [.connect(host)]
        case (.asking, .agentFailed(let text)):
            return refuse(.agentUnavailable(text))
        case (.connecting(let host, _), .connected):
            state = .relaying(host)
            return [.startTunnel(host)]
        case (.connecting(let host, let asks), .connectFailed(let text)):
            failedHosts.append(host)
            if failedHosts.count < attempts && asks < maxAsks {
                state = .asking(asks: asks + 1)
                return [.report(host, success: false), .askAgent(key: nil)]
            }
            return [.report(host, success: false)]
                + refuse(.backendsFailed(attempts: failedHosts.count, lastError: text))
        case (.relaying(let host), .tunnelEnded(let outcome)):
            state = .done
            guard let success = Self.backendSucceeded(outcome) else { return [.finished] }
            return [.report(host, success: success), .finished]
        default:
            return []
        }
    }

    /// The backend's part in a tunnel's end: true a success, false a failure, nil unknown (the proxy cut the tunnel
    /// before the backend said anything: nothing is reported).
    public static func backendSucceeded(_ outcome: TunnelOutcome) -> Bool? {
        let answered = outcome.serverToClientBytes > 0
        switch outcome.end {
        case .finished: return true
        case .failed(.server, _): return answered
        case .failed(.client, _): return true
        case .idleTimeout: return answered
        case .closed: return answered ? true : nil
        }
    }

    private mutating func refuse(_ refusal: Refusal) -> [Action] {
        state = .done
        return [.refuse(refusal), .finished]
    }
}
