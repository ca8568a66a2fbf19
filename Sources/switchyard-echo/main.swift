// A minimal echo server on the reactor alone: what an application that links only `Reactor` costs (the full
// `switchyard` CLI also carries Foundation, the database drivers and the crypto of the chat service). The
// benchmark suite measures this binary; `switchyard echo` behaves the same.
#if canImport(Glibc)
import EchoServer
import Glibc
#endif
import Dispatch
import Logging
import Reactor

let usage = """
    usage: switchyard-echo [--host A.B.C.D] [--port P] [--threads N] [--poller epoll|poll|select] [--busy-poll-us U]
                           [--scratch-kib K] [--placement adaptive|round-robin] [--max-connections C]
                           [--idle-timeout S] [--high-water-kib H]
                           [--log-level trace|debug|info|notice|warning|error|critical]
    Echoes raw bytes back to each client. Defaults: 127.0.0.1, 7777, one I/O thread per core, epoll, no busy
    polling (U: microseconds a loop keeps polling after an event before sleeping), a 64 KiB read area per loop
    (K: its size in KiB, 4...65536), adaptive placement (new connections go to as many loops as the machine has
    cores free; round-robin: every loop in turn), at most 100000 connections (more are refused), a connection
    that sends nothing for 300 s is closed (S: seconds, 0: never), at most 4096 KiB of echo queued per connection
    before the server stops reading from it (H), log level info (on standard error).
    """

func printError(_ text: String) {
    var text = text
    text.withUTF8 { _ = write(2, $0.baseAddress, $0.count) }
}

/// Writes to standard output at once (unbuffered: a test reads the first line while the server runs).
func printLine(_ text: String) {
    var text = text + "\n"
    text.withUTF8 { _ = write(1, $0.baseAddress, $0.count) }
}

func fail(_ message: String) -> Never {
    printError("switchyard-echo: \(message)\n\(usage)\n")
    exit(64)
}

var host = "127.0.0.1"
var port = 7777
var threads = SystemInfo.coreCount
var poller = PollerKind.epoll
var busyPollMicroseconds: Int64 = 0
var scratchBytes = LoopConfiguration().scratchBytes
var placement = LoopPlacement.adaptive
var placementName = "adaptive"
var maxConnections = ServerConfiguration().maxConnections
var idleTimeoutSeconds = 300
var highWaterKiB = ConnectionOptions().highWaterMark / 1024
var logLevel = Logger.Level.info
var arguments = CommandLine.arguments.dropFirst()
while let flag = arguments.popFirst() {
    if flag == "-h" || flag == "--help" {
        print(usage)
        exit(0)
    }
    guard let value = arguments.popFirst() else { fail("\(flag) needs a value") }
    switch flag {
    case "--host": host = value
    case "--port":
        guard let p = Int(value), (0...65535).contains(p) else { fail("--port must be 0...65535, got \(value)") }
        port = p
    case "--threads":
        guard let n = Int(value), (0...1024).contains(n) else { fail("--threads must be 0...1024, got \(value)") }
        threads = n
    case "--poller":
        guard let p = PollerKind(rawValue: value) else { fail("--poller must be epoll, poll or select") }
        poller = p
    case "--busy-poll-us":
        guard let u = Int64(value), (0...1_000_000).contains(u) else { fail("--busy-poll-us must be 0...1000000") }
        busyPollMicroseconds = u
    case "--scratch-kib":
        guard let k = Int(value), (4...65536).contains(k) else { fail("--scratch-kib must be 4...65536, got \(value)") }
        scratchBytes = k * 1024
    case "--placement":
        switch value {
        case "adaptive": placement = .adaptive
        case "round-robin": placement = .roundRobin
        default: fail("--placement must be adaptive or round-robin, got \(value)")
        }
        placementName = value
    case "--max-connections":
        guard let c = Int(value), c > 0 else { fail("--max-connections must be positive, got \(value)") }
        maxConnections = c
    case "--idle-timeout":
        guard let s = Int(value), (0...86_400).contains(s) else {
            fail("--idle-timeout must be 0...86400, got \(value)")
        }
        idleTimeoutSeconds = s
    case "--high-water-kib":
        guard let h = Int(value), (64...1_048_576).contains(h) else {
            fail("--high-water-kib must be 64...1048576, got \(value)")
        }
        highWaterKiB = h
    case "--log-level":
        guard let level = Logger.Level(rawValue: value) else {
            fail("--log-level must be trace, debug, info, notice, warning, error or critical, got \(value)")
        }
        logLevel = level
    default: fail("unknown option \(flag)")
    }
}

do {
    // Errors, and (at info) each change of how many loops take new connections, go to stderr.
    let level = logLevel
    let logger = Logger(label: "switchyard.echo") { label in
        var handler = StreamLogHandler.standardError(label: label)
        handler.logLevel = level
        return handler
    }
    let group = try EventLoopGroup(ioLoops: threads, configuration: LoopConfiguration(
        poller: poller, scratchBytes: scratchBytes, busyPoll: .microseconds(busyPollMicroseconds)),
        placement: placement, logger: logger)
    let done = DispatchSemaphore(value: 0)
    // Before accepting: a flood of clients right after the announce could otherwise take the descriptor the signal
    // eventfd needs, and a SIGTERM right after it could meet the default handler.
    let signals = try TerminationSignals(loop: group.acceptorLoop) { _ in done.signal() }
    let server = EchoService.server(group: group, host: host, port: port, maxConnections: maxConnections,
                                    highWaterKiB: highWaterKiB, idleTimeoutSeconds: idleTimeoutSeconds, logger: logger)
    let address = try server.start()
    printLine("echo listening on \(address) (poller \(poller), \(threads) I/O threads, \(placementName) placement)")
    done.wait()
    withExtendedLifetime(signals) {}
    server.shutdown(timeout: .seconds(5))
    group.shutdown()
} catch {
    printError("switchyard-echo: \(error)\n")
    exit(1)
}
