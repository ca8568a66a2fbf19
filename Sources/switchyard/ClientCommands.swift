#if canImport(Glibc)
import Glibc
#endif
import ArgumentParser
import Foundation
import LarsProtocol
import LoadBalanceAgent
import LoadBalanceClient
import LoadBalancing
import Messaging

/// Where the agent is: every operator command takes these.
struct AgentAddressOptions: ParsableArguments {
    @Option(help: "Agent address.") var agent = "127.0.0.1"
    @Option(help: "The agent's three UDP ports, comma-separated.") var ports = "8888,8889,8890"
    @Option(help: "Milliseconds to wait for the agent's answer.") var timeoutMs = 500
    @Option(help: "The shared secret of an agent started with --report-secret (sent with reports).")
    var reportSecret: String?

    var portList: [Int] { ports.split(separator: ",").compactMap { Int($0.filter { $0 != " " }) } }

    func validate() throws {
        let list = portList
        guard !list.isEmpty, list.count == ports.split(separator: ",").count,
              list.allSatisfy({ (1...65535).contains($0) }) else {
            throw ValidationError("--ports must be comma-separated ports 1...65535, got '\(ports)'")
        }
        guard timeoutMs > 0 else { throw ValidationError("--timeout-ms must be positive") }
    }

    func makeClient() throws -> LoadBalanceClient {
        try LoadBalanceClient(agentHost: agent, agentPorts: portList, timeout: .milliseconds(timeoutMs),
                              reportSecret: reportSecret.map { Array($0.utf8) })
    }
}

/// An agent fetches a module it has never seen on the first request; operators want the answer after that.
private func retrying<T>(for milliseconds: Int, until done: (T) -> Bool, _ body: () async throws -> T) async throws -> T {
    let deadline = ContinuousClock.now + .milliseconds(milliseconds)
    var result = try await body()
    while !done(result) && ContinuousClock.now < deadline {
        try await Task.sleep(for: .milliseconds(50))
        result = try await body()
    }
    return result
}

/// Prints a line to stderr.
private func printError(_ line: String) {
    let bytes = Array((line + "\n").utf8)
    _ = bytes.withUnsafeBytes { write(2, $0.baseAddress, $0.count) }
}

struct GetHostCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "gethost", abstract: "Ask the agent for a host of (modid, cmdid); exit 1 unless SUCC, 2 when no agent answers.")

    @Option(help: "Module id.") var modid: Int32?
    @Option(help: "Command id.") var cmdid: Int32?
    @Option(help: "Keep asking while the agent answers NOEXIST (it fetches new modules), for this many ms.")
    var retryMs = 1000
    @Option(help: "Pick by key (consistent hashing with bounded loads: the same key, the same host while it has room).")
    var key: String?
    @Option(help: ArgumentHelp(
        "Several services in one datagram (batch GetHost, ids 104/105): modid:cmdid[:key],... in place of --modid and "
            + "--cmdid; one line per service, in order (exit 1 unless every answer is SUCC).",
        valueName: "services"))
    var batch: String?
    @Flag(help: "With --batch: print the answers as one JSON array instead of a table.") var json = false
    @OptionGroup var address: AgentAddressOptions

    func validate() throws {
        if let batch {
            guard modid == nil, cmdid == nil, key == nil else {
                throw ValidationError("--batch takes the place of --modid, --cmdid and --key")
            }
            guard batchQueries(batch) != nil else {
                throw ValidationError(
                    "--batch must be modid:cmdid[:key],... (for example 1:1,2:1:room-7), got '\(batch)'")
            }
        } else {
            guard modid != nil, cmdid != nil else {
                throw ValidationError("--modid and --cmdid are needed (or --batch)")
            }
            guard !json else { throw ValidationError("--json goes with --batch") }
        }
    }

    private func batchQueries(_ text: String) -> [HostQuery]? {
        let queries = text.split(separator: ",").compactMap { HostQuery($0) }
        return queries.isEmpty || queries.count != text.split(separator: ",", omittingEmptySubsequences: false).count
            ? nil : queries
    }

    /// One answer of `--batch --json`.
    private struct BatchAnswer: Encodable {
        var modid: Int32
        var cmdid: Int32
        var key: String?
        var retcode: Int32
        var result: String
        var host: String?
    }

    func run() async throws {
        let client = try address.makeClient()
        defer { client.close() }
        if let batch, let queries = batchQueries(batch) {
            try await runBatch(client, queries)
            return
        }
        guard let modid, let cmdid else { return }
        do {
            let result = try await retrying(for: retryMs,
                                            until: { (result: GetHostResult) in result != .noSuchModule }) {
                if let key { try await client.getHost(modid: modid, cmdid: cmdid, key: key) }
                else { try await client.getHost(modid: modid, cmdid: cmdid) }
            }
            announce(result.description)
            if !result.isSuccess { throw ExitCode(1) }
        } catch let error as LoadBalanceClientError {
            printError("gethost: \(error)")
            throw ExitCode(2)
        }
    }

    private func runBatch(_ client: LoadBalanceClient, _ queries: [HostQuery]) async throws {
        let results: [GetHostResult]
        do {
            results = try await retrying(for: retryMs, until: { (results: [GetHostResult]) in
                !results.contains(.noSuchModule)
            }) { try await client.getHosts(queries) }
        } catch let error as LoadBalanceClientError {
            printError("gethost: \(error)")
            throw ExitCode(2)
        }
        if json {
            let answers = zip(queries, results).map { query, result in
                BatchAnswer(modid: query.modid, cmdid: query.cmdid,
                            key: query.key.map { String(decoding: $0, as: UTF8.self) }, retcode: result.retcode,
                            result: result.host == nil ? result.description : "SUCC", host: result.host?.description)
            }
            let encoder = JSONEncoder()
            encoder.outputFormatting = [.sortedKeys]
            announce(String(decoding: try encoder.encode(answers), as: UTF8.self))
        } else {
            let width = max(7, queries.map { $0.description.count }.max() ?? 0)
            announce("service" + String(repeating: " ", count: width - 7) + "  answer")
            for (query, result) in zip(queries, results) {
                let name = query.description
                announce(name + String(repeating: " ", count: width - name.count) + "  " + result.description)
            }
        }
        if !results.allSatisfy(\.isSuccess) { throw ExitCode(1) }
    }
}

struct ReportCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "report", abstract: "Tell the agent how a call to a host went (retcode 0: success).")

    @Option(help: "Module id.") var modid: Int32
    @Option(help: "Command id.") var cmdid: Int32
    @Option(help: "The host's IPv4 address.") var ip: String
    @Option(help: "The host's port.") var port: Int
    @Option(help: "0 success, anything else a failure (1 overload).") var retcode: Int32 = 0
    @OptionGroup var address: AgentAddressOptions

    func validate() throws {
        guard Host(address: ip, port: port) != nil else {
            throw ValidationError("--ip must be a dotted quad and --port 0...65535, got \(ip):\(port)")
        }
    }

    func run() async throws {
        let client = try address.makeClient()
        defer { client.close() }
        let host = Host(address: ip, port: port)!
        client.report(modid: modid, cmdid: cmdid, host: host, retcode: retcode)
        announce("reported \(host) retcode \(retcode) for \(modid)/\(cmdid)")
    }
}

struct GetRouteCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "getroute", abstract: "Print the hosts the agent knows for (modid, cmdid), one per line.")

    @Option(help: "Module id.") var modid: Int32
    @Option(help: "Command id.") var cmdid: Int32
    @Option(help: "Keep asking while the route is empty (the agent fetches new modules), for this many ms.")
    var retryMs = 1000
    @OptionGroup var address: AgentAddressOptions

    func run() async throws {
        let client = try address.makeClient()
        defer { client.close() }
        do {
            let hosts = try await retrying(for: retryMs, until: { !$0.isEmpty }) {
                try await client.getRoute(modid: modid, cmdid: cmdid)
            }
            if hosts.isEmpty { announce("no hosts for \(modid)/\(cmdid)") }
            for host in hosts { announce(host.description) }
        } catch let error as LoadBalanceClientError {
            printError("getroute: \(error)")
            throw ExitCode(2)
        }
    }
}
