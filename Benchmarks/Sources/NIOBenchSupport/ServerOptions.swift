/// Command-line options shared by the SwiftNIO baseline servers:
/// `--host 127.0.0.1 --port 0 --threads 1`.
public struct ServerOptions: Sendable {
    /// Address to bind; loopback by default.
    public var host = "127.0.0.1"
    /// Port to bind; 0 lets the kernel pick (the bound port is printed).
    public var port = 0
    /// Number of event loops in the `MultiThreadedEventLoopGroup`.
    public var threads = 1

    public init() {}

    /// Parses `arguments` (without the program name); exits with a usage line on anything unknown.
    public static func parse(_ arguments: [String], program: String) -> ServerOptions {
        var options = ServerOptions()
        var rest = arguments[...]
        func usage() -> Never {
            print("usage: \(program) [--host 127.0.0.1] [--port 0] [--threads N]")
            exit(2)
        }
        while let flag = rest.popFirst() {
            guard let value = rest.popFirst() else { usage() }
            switch flag {
            case "--host": options.host = value
            case "--port": options.port = Int(value) ?? { usage() }()
            case "--threads": options.threads = Int(value) ?? { usage() }()
            default: usage()
            }
        }
        guard options.threads > 0, (0...65535).contains(options.port) else { usage() }
        return options
    }
}

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
