import LarsProtocol
import Reactor
import SwitchyardCore

extension LoopLoadBalanceClient {
    /// Asks the agent for a host of every query in one datagram (a Switchyard agent only; message ids 104/105), as
    /// `LoadBalanceClient.getHosts(_:)` does: `completion` runs on the loop with the results in the order of
    /// `queries`, each as its own `getHost` would have it, or a `LoadBalanceClientError` (`.batchRefused` when the
    /// agent serves no batch that large or the queries do not fit in one datagram, `.timeout`, `.closed`,
    /// `.badReply`). Sent to the agent port of the first query; with `batched`, at the end of the loop's iteration
    /// with its reports (as `getHost(modid:cmdid:key:batched:completion:)`). Loop thread only.
    ///
    /// ```swift
    /// agent.getHosts([HostQuery(modid: 1, cmdid: 1), HostQuery(modid: 2, cmdid: 1, key: "room-7")]) { result in
    ///     if case .success(let answers) = result { login(with: answers) }   // on `loop`
    /// }
    /// ```
    public func getHosts(_ queries: [HostQuery], batched: Bool = false,
                         completion: @escaping (Result<[GetHostResult], LoadBalanceClientError>) -> Void) {
        loop.assertInLoopThread()
        if pendingBatches.isClosed { return completion(.failure(.closed)) }
        nextSequence &+= 1
        let seq = nextSequence
        let frame: [UInt8]
        do {
            frame = try AgentRequests.getHostBatch(seq: seq, queries: queries)
        } catch let error as LoadBalanceClientError {
            return completion(.failure(error))
        } catch {
            return completion(.failure(.badReply("cannot encode the request: \(error)")))
        }
        let destination = agents.address(modid: queries[0].modid, cmdid: queries[0].cmdid)
        let timeoutError = agents.timeoutError(destination)
        pendingBatches.add(seq, context: queries,
                           deadline: SystemInfo.monotonicNanoseconds() &+ timeout.nanosecondsSaturated,
                           timeoutError: timeoutError, completion: completion)
        if batched {
            queue(frame, to: destination, reports: 0)
        } else {
            frame.withUnsafeBytes { _ = endpoint.channels[0].sendInLoop($0, to: destination) }
        }
    }

    /// Batch requests waiting for the agent.
    public var pendingBatchCount: Int { pendingBatches.count }
}
