import ArgumentParser
import DatabaseAgent
import Foundation
import Logging
import Reactor
import Storage

struct DatabaseAgentCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "db-agent",
        abstract: "The database agent: named statements and SQL for token holders over frames, on one pool.",
        discussion: """
            The access file (--access) holds one entry per line, '#' for comments: 'statement NAME = SQL' (with ? \
            placeholders) and 'token SECRET [sql] [statements=NAME,NAME] [rows=N] [rate=N] [name=LABEL]'. A bad line \
            stops the agent at start with its line number.
            """
    )

    @Option(help: "Address to bind.") var host = "127.0.0.1"
    @Option(help: "Port to bind (0: the kernel picks; the bound address is printed).") var port = 7795
    @Option(name: .customLong("db"),
            help: "Database URL: sqlite:FILE, mysql://user:pass@host:port/db or postgres://user:pass@host:port/db.")
    var url = "sqlite:switchyard.sqlite"
    @Option(help: "The access file: statements and tokens.") var access: String
    @Option(help: "Connections at once; more are refused at accept.") var maxConnections = 1024
    @Option(help: "Pooled database connections at most.") var poolSize = 8
    @Option(help: "I/O threads (0: the acceptor thread does the I/O).") var loops = SystemInfo.coreCount
    @Option(help: "I/O multiplexer: epoll, poll or select.") var poller: PollerKind = .epoll
    @Option(help: ArgumentHelp("Microseconds an I/O thread polls without sleeping after an event (0: off).",
                               discussion: "A statement's answer and the caller's next request then find the thread "
                                   + "awake instead of paying a wake-up; the price is CPU while requests come."))
    var busyPollUs = Int64(DatabaseAgentConfiguration.defaultBusyPoll / .microseconds(1))
    @Option(help: "Open requests per connection; more are refused busy.") var maxRequestsPerConnection = 16
    @Option(help: "Open requests across the agent; more are refused busy.") var maxRequestsInFlight = 1024
    @Option(help: "Rows per chunk when a request gives none.") var batchRows = 256
    @Option(help: "A statement's timeout in milliseconds when a request gives none.") var timeoutMs = 30_000
    @Option(help: "Seconds a caller may take to ask for the next chunk of rows before its request ends (0: never).")
    var creditTimeout = 60
    @Option(help: "Transactions open at once, each holding a pooled connection (at most --pool-size - 1); more busy.")
    var maxTransactions = 4
    @Option(help: "Seconds a transaction may stay open before the agent rolls it back.") var transactionTimeout = 60
    @OptionGroup var service: ServiceOptions

    func validate() throws {
        guard (0...65535).contains(port) else { throw ValidationError("--port must be 0...65535, got \(port)") }
        guard (0...1024).contains(loops) else { throw ValidationError("--loops must be 0...1024, got \(loops)") }
        guard (0...1_000_000).contains(busyPollUs) else {
            throw ValidationError("--busy-poll-us must be 0...1000000, got \(busyPollUs)")
        }
        guard poolSize >= 1 else { throw ValidationError("--pool-size must be at least 1") }
        guard creditTimeout >= 0 else { throw ValidationError("--credit-timeout must be >= 0 (0: never)") }
        guard timeoutMs >= 1 else { throw ValidationError("--timeout-ms must be at least 1") }
        guard maxTransactions >= 1 else { throw ValidationError("--max-transactions must be at least 1") }
        do {
            try makeConfiguration().validate()
        } catch {
            throw ValidationError("\(error)")
        }
    }

    func makeConfiguration() -> DatabaseAgentConfiguration {
        var configuration = DatabaseAgentConfiguration(
            server: ServerConfiguration(host: host, port: port, maxConnections: maxConnections),
            defaultTimeout: .milliseconds(timeoutMs), defaultBatchRows: batchRows,
            maxRequestsPerConnection: maxRequestsPerConnection, maxRequestsInFlight: maxRequestsInFlight,
            creditTimeout: creditTimeout == 0 ? nil : .seconds(creditTimeout),
            maxTransactions: min(maxTransactions, max(1, poolSize - 1)),
            transactionTimeout: .seconds(transactionTimeout))
        configuration.maxTimeout = max(configuration.maxTimeout, configuration.defaultTimeout)
        configuration.maxBatchRows = max(configuration.maxBatchRows, batchRows)
        return configuration
    }

    func run() async throws {
        let text: String
        do {
            text = try String(contentsOfFile: access, encoding: .utf8)
        } catch {
            throw CommandFailure("access \(access): cannot read it: \(error.localizedDescription)")
        }
        let rules: AccessRules
        do {
            rules = try AccessFile.parse(text)
        } catch {
            throw CommandFailure("access \(access):\(error.line): \(error.reason)")
        }
        service.bootstrapLogging()
        let logger = Logger(label: "switchyard.dbagent")
        let pool: ConnectionPool
        do {
            pool = try ConnectionPool(url: url, configuration: PoolConfiguration(maxConnections: poolSize),
                                      logger: logger)
        } catch {
            throw CommandFailure("db-agent: bad --db: \(error)")
        }
        let group = try EventLoopGroup(ioLoops: loops, configuration: LoopConfiguration(
            poller: poller, busyPoll: .microseconds(busyPollUs)), logger: logger)
        let agent = DatabaseAgentServer(group: group, configuration: makeConfiguration(), rules: rules, pool: pool,
                                        logger: logger)
        try await serve(agent, binding: agent.start, command: "db-agent", host: host, port: port, group: group,
                        pool: pool,
                        announcing: { "db-agent listening on \($0) (db \(url), \(rules.statements.count) statements, " +
                            "\(rules.tokens.count) tokens, poller \(poller), \(loops) I/O threads)" },
                        logger: logger)
    }
}

struct DatabaseQueryCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "db-query",
        abstract: "Run one statement through a database agent and print its rows (a table, or JSON).",
        discussion: """
            Parameters, in order of the statement's ? placeholders: a bare integer (7), int:N, double:X, \
            text:ANYTHING, blob:HEX or null.
            """
    )

    @Option(help: "The agent, HOST:PORT.") var agent = "127.0.0.1:7795"
    @Option(help: "The caller's token (of the agent's access file).") var token: String
    @Option(help: "A named statement of the agent's access file.") var statement: String?
    @Option(help: "SQL text with ? placeholders (the token needs 'sql').") var sql: String?
    @Option(help: "A parameter: 7, int:7, double:1.5, text:alice, blob:00ff or null (repeat, in order).")
    var param: [String] = []
    @Option(help: "Rows at most (0: the agent's and the token's limit).") var rowLimit = 0
    @Option(help: "The statement's timeout in milliseconds (0: the agent's default).") var timeoutMs = 0
    @Flag(help: "Print one JSON object instead of a table.") var json = false

    func run() throws {
        guard (statement == nil) != (sql == nil) else {
            throw CommandFailure("db-query: give --statement NAME or --sql TEXT (one of them)")
        }
        var parameters: [SQLValue] = []
        for text in param {
            do {
                parameters.append(try AgentParameter.parse(text))
            } catch {
                throw CommandFailure("db-query: \(error)")
            }
        }
        guard let (host, port) = splitHostPort(agent) else {
            throw CommandFailure("db-query: --agent must be HOST:PORT, got '\(agent)'")
        }
        let timeout: Duration? = timeoutMs > 0 ? .milliseconds(timeoutMs) : nil
        let result: AgentResult
        do {
            let client = try BlockingDatabaseAgentClient(host: host, port: port, token: token,
                                                         timeout: .milliseconds(max(timeoutMs, 0) + 30_000))
            let request: AgentStatement = statement.map { .named($0, parameters) } ?? .sql(sql!, parameters)
            result = try client.execute(request, rowLimit: rowLimit, timeout: timeout)
        } catch {
            throw CommandFailure("db-query: \(error)")
        }
        if json {
            print(Self.json(result))
        } else {
            print(Self.table(result), terminator: "")
        }
    }

    private func splitHostPort(_ text: String) -> (String, Int)? {
        guard let colon = text.lastIndex(of: ":"), let port = Int(text[text.index(after: colon)...]),
              (1...65535).contains(port), colon != text.startIndex else { return nil }
        return (String(text[..<colon]), port)
    }

    static func cell(_ value: SQLValue) -> String {
        switch value {
        case .null: return "NULL"
        case .integer(let v): return String(v)
        case .double(let v): return String(v)
        case .text(let v): return v
        case .blob(let bytes): return "x'" + bytes.map { String($0, radix: 16).leftPadded(2) }.joined() + "'"
        }
    }

    /// The rows under their column names, columns as wide as their widest cell; then a summary line.
    static func table(_ result: AgentResult) -> String {
        var out = ""
        if !result.columns.isEmpty {
            let header = result.columns.map(\.name)
            let cells = result.rows.map { $0.map(cell) }
            var widths = header.map(\.count)
            for row in cells {
                for (i, c) in row.enumerated() where i < widths.count { widths[i] = max(widths[i], c.count) }
            }
            func line(_ items: [String]) -> String {
                items.enumerated().map { i, c in c.padding(toLength: widths[i], withPad: " ", startingAt: 0) }
                    .joined(separator: " | ")
            }
            out += line(header) + "\n"
            out += widths.map { String(repeating: "-", count: $0) }.joined(separator: "-+-") + "\n"
            for row in cells { out += line(row) + "\n" }
        }
        var summary = "(\(result.rows.count) row\(result.rows.count == 1 ? "" : "s")"
        if result.truncated { summary += ", truncated by the row limit" }
        // Statements without columns: what they changed (a query's count is the driver's of an earlier statement).
        if result.columns.isEmpty {
            summary += ", \(result.affectedRows) affected"
            if let id = result.lastInsertID, result.affectedRows != 0 { summary += ", last insert id \(id)" }
        }
        return out + summary + ")\n"
    }

    /// `{"columns": [...], "types": [...], "rows": [[...]], "affected_rows": N, "last_insert_id": N|null,
    /// "truncated": bool}`; a blob is `{"blob": "HEX"}`.
    static func json(_ result: AgentResult) -> String {
        func value(_ v: SQLValue) -> Any {
            switch v {
            case .null: return NSNull()
            case .integer(let x): return NSNumber(value: x)
            case .double(let x): return x.isFinite ? NSNumber(value: x) : String(x) as Any
            case .text(let x): return x
            case .blob(let bytes): return ["blob": bytes.map { String($0, radix: 16).leftPadded(2) }.joined()]
            }
        }
        let object: [String: Any] = [
            "columns": result.columns.map(\.name),
            "types": result.columns.map(\.type.rawValue),
            "rows": result.rows.map { $0.map(value) },
            "affected_rows": NSNumber(value: result.affectedRows),
            "last_insert_id": result.lastInsertID.map { NSNumber(value: $0) } ?? NSNull(),
            "truncated": result.truncated,
        ]
        let data = (try? JSONSerialization.data(withJSONObject: object, options: [.sortedKeys])) ?? Data("{}".utf8)
        return String(decoding: data, as: UTF8.self)
    }
}

private extension String {
    func leftPadded(_ width: Int) -> String {
        count >= width ? self : String(repeating: "0", count: width - count) + self
    }
}
