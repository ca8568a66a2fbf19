// SwiftNIO echo baseline: a handler that writes back what it reads, on a MultiThreadedEventLoopGroup.
//
//   nio-echo [--host 127.0.0.1] [--port 0] [--threads N]
import NIOBenchSupport
import NIOCore

/// Writes every inbound buffer back and flushes once per read burst (NIO's canonical echo).
final class EchoHandler: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        context.write(data, promise: nil)
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        context.flush()
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        context.close(promise: nil)
    }
}

let options = ServerOptions.parse(Array(CommandLine.arguments.dropFirst()), program: "nio-echo")
try runServer(options: options) { channel in
    channel.eventLoop.makeCompletedFuture {
        try channel.pipeline.syncOperations.addHandler(EchoHandler())
    }
}
