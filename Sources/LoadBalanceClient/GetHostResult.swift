import LarsProtocol
import LoadBalancing

/// The agent's answer to `getHost`: one case per Lars return code (`LarsReturnCode`), the host with success.
///
/// ```swift
/// switch try await client.getHost(modid: 7, cmdid: 1) {
/// case .host(let host): call(host)
/// case .noSuchModule: retryLater()       // the agent is fetching the route, or the module has no hosts
/// case .overloaded, .systemError: fail()
/// }
/// ```
public enum GetHostResult: Sendable, Hashable, CustomStringConvertible {
    /// SUCC (0): call this host.
    case host(Host)
    /// OVERLOAD (1): every host of the module is overloaded and this request was not a probe.
    case overloaded
    /// SYSTEM_ERROR (2): the agent failed.
    case systemError
    /// NOEXIST (3): the agent does not know the module yet (it asks the name service on the first request) or
    /// the module has no hosts.
    case noSuchModule

    /// The result a GetHostResponse carries. Throws `LoadBalanceClientError.badReply` for a return code Lars does
    /// not define, or a success without a usable host.
    init(_ response: Lars_GetHostResponse) throws(LoadBalanceClientError) {
        switch response.retcode {
        case LarsReturnCode.success:
            guard response.hasHost, let host = Host(response.host) else {
                throw .badReply("SUCC without a usable host")
            }
            self = .host(host)
        case LarsReturnCode.overload: self = .overloaded
        case LarsReturnCode.systemError: self = .systemError
        case LarsReturnCode.notExist: self = .noSuchModule
        default: throw .badReply("unknown return code \(response.retcode)")
        }
    }

    /// The host to call (with `.host` only).
    public var host: Host? {
        if case .host(let host) = self { return host }
        return nil
    }

    /// True when the agent chose a host.
    public var isSuccess: Bool { host != nil }

    /// The Lars return code on the wire (`LarsReturnCode`).
    public var retcode: Int32 {
        switch self {
        case .host: return LarsReturnCode.success
        case .overloaded: return LarsReturnCode.overload
        case .systemError: return LarsReturnCode.systemError
        case .noSuchModule: return LarsReturnCode.notExist
        }
    }

    /// Lars's name of the return code, and the host with SUCC: `SUCC 10.0.0.1:9000`, `OVERLOAD`, `SYSTEM_ERROR`,
    /// `NOEXIST` (what `switchyard gethost` prints).
    public var description: String {
        switch self {
        case .host(let host): return "SUCC \(host)"
        case .overloaded: return "OVERLOAD"
        case .systemError: return "SYSTEM_ERROR"
        case .noSuchModule: return "NOEXIST"
        }
    }
}
