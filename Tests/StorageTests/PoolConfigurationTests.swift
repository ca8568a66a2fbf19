import Logging
import Storage
import Testing

@Suite("PoolConfiguration.validate")
struct PoolConfigurationTests {
    @Test("the defaults and a minimal pool are valid")
    func defaultsAreValid() throws {
        try PoolConfiguration().validate()
        try PoolConfiguration(minConnections: 0, maxConnections: 1).validate()
    }

    @Test("each impossible setting is named", arguments: [
        (PoolConfiguration(minConnections: 0, maxConnections: 0), PoolConfigurationError.noConnections(maxConnections: 0)),
        (PoolConfiguration(minConnections: 3, maxConnections: 2), .minimumOutOfRange(minConnections: 3, maxConnections: 2)),
        (PoolConfiguration(minConnections: -1), .minimumOutOfRange(minConnections: -1, maxConnections: 8)),
        (PoolConfiguration(acquireTimeout: .zero), .badDuration(name: "acquireTimeout", value: .zero)),
        (PoolConfiguration(reconnectBackoff: .seconds(10), maxReconnectBackoff: .seconds(1)),
         .badDuration(name: "maxReconnectBackoff", value: .seconds(1))),
    ])
    func refused(configuration: PoolConfiguration, expected: PoolConfigurationError) {
        #expect(throws: expected) { try configuration.validate() }
    }

    @Test("a pool with an impossible configuration is refused at creation, not a crash later")
    func poolRefusesIt() {
        #expect(throws: PoolConfigurationError.noConnections(maxConnections: 0)) {
            _ = try ConnectionPool(url: "sqlite::memory:", configuration: PoolConfiguration(maxConnections: 0),
                                   logger: Logger(label: "test"))
        }
    }
}
