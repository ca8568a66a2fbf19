import NIOCore
import NIOPosix

/// Binds a TCP server with the given pipeline on `options.threads` event loops, prints
/// `listening on HOST:PORT` (the line scripts/bench parses), and serves until the process is killed.
public func runServer(
    options: ServerOptions,
    childInitializer: @escaping @Sendable (Channel) -> EventLoopFuture<Void>
) throws -> Never {
    let group = MultiThreadedEventLoopGroup(numberOfThreads: options.threads)
    let channel = try ServerBootstrap(group: group)
        .serverChannelOption(.backlog, value: 4096)
        .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
        .childChannelOption(.tcpOption(.tcp_nodelay), value: 1)
        .childChannelOption(.socketOption(.so_reuseaddr), value: 1)
        .childChannelInitializer(childInitializer)
        .bind(host: options.host, port: options.port)
        .wait()
    let port = channel.localAddress?.port ?? options.port
    print("listening on \(options.host):\(port)")
    fflush(nil)  // all streams: stdout is a pipe to scripts/bench
    try channel.closeFuture.wait()
    exit(0)
}

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
