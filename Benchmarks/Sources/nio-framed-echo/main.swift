// SwiftNIO framed baseline: Lars frames (length-field decoder), body parsed with swift-protobuf as
// switchyard.bench.EchoMessage, re-encoded and written back under the same message id.
//
//   nio-framed-echo [--host 127.0.0.1] [--port 0] [--threads N]
import BenchProto
import NIOBenchSupport
import NIOCore
import SwiftProtobuf

/// Parses each frame's body, serializes the message again and writes a frame with the same id.
final class FramedEchoHandler: ChannelInboundHandler {
    typealias InboundIn = LarsFrame
    typealias OutboundOut = ByteBuffer

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        var frame = Self.unwrapInboundIn(data)
        do {
            let bodyBytes = frame.body.readBytes(length: frame.body.readableBytes)!
            let message = try Switchyard_Bench_EchoMessage(serializedBytes: bodyBytes)
            let reply: [UInt8] = try message.serializedBytes()
            var out = context.channel.allocator.buffer(capacity: LarsFrameDecoder.headerSize + reply.count)
            out.writeInteger(frame.id, endianness: .little)
            out.writeInteger(Int32(reply.count), endianness: .little)
            out.writeBytes(reply)
            context.write(Self.wrapOutboundOut(out), promise: nil)
        } catch {
            context.close(promise: nil)
        }
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        context.flush()
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        context.close(promise: nil)
    }
}

let options = ServerOptions.parse(Array(CommandLine.arguments.dropFirst()), program: "nio-framed-echo")
try runServer(options: options) { channel in
    channel.eventLoop.makeCompletedFuture {
        try channel.pipeline.syncOperations.addHandler(ByteToMessageHandler(LarsFrameDecoder()))
        try channel.pipeline.syncOperations.addHandler(FramedEchoHandler())
    }
}
