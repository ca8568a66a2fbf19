import Messaging
import Reactor
import Testing

@Suite("Configuration validate(): a clear error instead of a crash or a silent clamp")
struct ConfigurationValidationTests {
    @Test("the defaults are valid")
    func defaults() throws {
        try ServerConfiguration().validate()
        try ClientConfiguration(host: "127.0.0.1", port: 80).validate()
        try LoopConfiguration().validate()
        try FramedServerConfiguration().validate()
    }

    @Test("each impossible setting is named", arguments: [
        (ServerConfiguration(port: 70_000), "ServerConfiguration.port"),
        (ServerConfiguration(maxConnections: 0), "ServerConfiguration.maxConnections"),
        (ServerConfiguration(backlog: 0), "ServerConfiguration.backlog"),
    ])
    func server(configuration: ServerConfiguration, setting: String) {
        #expect(throws: ConfigurationError.self) { try configuration.validate() }
        do { try configuration.validate() } catch { #expect(error.setting == setting) }
    }

    @Test("water marks: the low one below the high one")
    func waterMarks() {
        var options = ConnectionOptions()
        options.lowWaterMark = options.highWaterMark
        do {
            try options.validate()
            Issue.record("accepted equal water marks")
        } catch {
            #expect(error.setting == "ConnectionOptions.lowWaterMark")
        }
    }

    @Test("framed limits: a body length an Int32 cannot carry, a zero idle timeout")
    func framed() {
        #expect(throws: ConfigurationError.self) {
            try FramedServerConfiguration(maxBodyLength: Int(Int32.max) + 1).validate()
        }
        #expect(throws: ConfigurationError.self) { try FramedServerConfiguration(idleTimeout: .zero).validate() }
    }

    @Test("a server with an impossible configuration refuses to start and binds nothing")
    func serverRefusesToStart() throws {
        let group = try EventLoopGroup(ioLoops: 1)
        defer { group.shutdown() }
        let server = FramedServer(group: group, configuration: FramedServerConfiguration(
            server: ServerConfiguration(port: 0, maxConnections: 0)), router: MessageRouter<TCPConnection>())
        #expect(throws: ConfigurationError.self) { try server.start() }
        #expect(server.localAddress == nil)
    }
}
