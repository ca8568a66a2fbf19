import ArgumentParser
import Chat
import Logging
import Reactor
import ServiceLifecycle
import Storage

struct ChatCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "chat",
        abstract: "The chat server: users, rooms with history, private messages, friends and presence."
    )

    @Option(help: "Address to bind.") var host = "127.0.0.1"
    @Option(help: "Port to bind (0: the kernel picks; the bound address is printed).") var port = 7790
    @Option(help: "Database URL for users, friends and room history (sqlite:PATH, mysql://..., postgres://...).")
    var db = "sqlite:chat.sqlite"
    @Option(help: "I/O threads (0: the acceptor thread does the I/O).") var threads = SystemInfo.coreCount
    @Option(help: "I/O multiplexer: epoll, poll or select.") var poller: PollerKind = .epoll
    @Option(help: "Seconds of silence (no heartbeat) before a client is disconnected and announced offline.")
    var idleTimeout = 30
    @Option(help: "Messages of a room sent to a member on join.") var history = 50
    @Option(help: "Room and private messages per second per user.") var rate = 20
    @Option(help: "PBKDF2-SHA256 iterations for new password hashes (at least 100000).")
    var passwordIterations = 210_000
    @Option(help: "Longest room name in UTF-8 bytes.") var maxRoomNameBytes = 128
    @Option(help: "Requests needing the database or the password hash in progress per connection; more get busy.")
    var maxRequestsPerConnection = 2
    @Option(help: "The same per source address, all its connections together (keep it below the pool size).")
    var maxRequestsPerSource = 4
    @Option(help: "Registrations a minute per source address after the burst (0: no limit).")
    var registrationsPerMinute = 30
    @Option(help: "Registrations a source address may make at once.") var registrationBurst = 5
    @OptionGroup var service: ServiceOptions
    @OptionGroup var loops: PlacementOptions

    func validate() throws {
        guard (0...65535).contains(port) else { throw ValidationError("--port must be 0...65535, got \(port)") }
        guard (0...1024).contains(threads) else { throw ValidationError("--threads must be 0...1024, got \(threads)") }
        guard idleTimeout >= 0 else { throw ValidationError("--idle-timeout must be >= 0 (0: off)") }
        guard history >= 0 && history <= 10_000 else { throw ValidationError("--history must be 0...10000") }
        guard rate > 0 else { throw ValidationError("--rate must be positive") }
        guard registrationsPerMinute >= 0 else { throw ValidationError("--registrations-per-minute must be >= 0") }
        guard passwordIterations >= PasswordHasher.minimumIterations else {
            throw ValidationError("--password-iterations must be at least \(PasswordHasher.minimumIterations)")
        }
        do {
            try makeConfiguration().validate()
        } catch {
            throw ValidationError("\(error)")
        }
    }

    func makeConfiguration() -> ChatConfiguration {
        ChatConfiguration(
            server: ServerConfiguration(host: host, port: port),
            idleTimeout: idleTimeout == 0 ? nil : .seconds(idleTimeout),
            maxRoomNameBytes: maxRoomNameBytes, messagesPerSecond: rate, historyLength: history,
            passwordIterations: passwordIterations, maxRequestsInFlightPerConnection: maxRequestsPerConnection,
            maxRequestsInFlightPerSource: maxRequestsPerSource,
            registrationsPerMinute: registrationsPerMinute == 0 ? nil : registrationsPerMinute,
            registrationBurst: registrationBurst)
    }

    func run() async throws {
        service.bootstrapLogging()
        let logger = Logger(label: "switchyard.chat")
        let pool: ConnectionPool
        do {
            pool = try ConnectionPool(url: db, logger: logger)
        } catch {
            throw CommandFailure("chat: bad --db: \(error)")
        }
        let group = try loops.group(threads: threads, poller: poller, logger: logger)
        let server = ChatServer(group: group, configuration: makeConfiguration(), pool: pool, logger: logger)
        let address: SocketAddress
        do {
            address = try await server.start()
        } catch {
            await group.shutdown()
            await pool.close()
            throw CommandFailure("chat: cannot start on \(host):\(port) with \(db): \(error)")
        }
        try await runServices(
            [EventLoopGroupService(group: group), pool, server],
            announcing: "chat listening on \(address) (db \(db), poller \(poller), \(threads) I/O threads)",
            logger: logger)
    }
}
