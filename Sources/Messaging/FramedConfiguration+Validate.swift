import LarsWire
import Reactor

extension FramedServerConfiguration {
    /// Throws the first setting that cannot work (the TCP settings included). `FramedServer.start()` calls it.
    public func validate() throws(ConfigurationError) {
        try server.validate()
        if !(0...Int(Int32.max)).contains(maxBodyLength) {
            throw ConfigurationError("FramedServerConfiguration.maxBodyLength",
                                     "must be 0...\(Int32.max) (a frame's length is an Int32), got \(maxBodyLength)")
        }
        if let idleTimeout, idleTimeout <= .zero {
            throw ConfigurationError("FramedServerConfiguration.idleTimeout", "must be positive when set")
        }
        if let headTimeout, headTimeout <= .zero {
            throw ConfigurationError("FramedServerConfiguration.headTimeout", "must be positive when set")
        }
        if partialFrameBudgetBytes < 0 {
            throw ConfigurationError("FramedServerConfiguration.partialFrameBudgetBytes",
                                     "must not be negative (0: no budget), got \(partialFrameBudgetBytes)")
        }
        if logQuietInterval <= .zero {
            throw ConfigurationError("FramedServerConfiguration.logQuietInterval", "must be positive")
        }
    }
}

extension FramedClientConfiguration {
    /// Throws the first setting that cannot work (the TCP settings included).
    public func validate() throws(ConfigurationError) {
        try client.validate()
        if !(0...Int(Int32.max)).contains(maxBodyLength) {
            throw ConfigurationError("FramedClientConfiguration.maxBodyLength", "must be 0...\(Int32.max), got \(maxBodyLength)")
        }
        if let heartbeatInterval, heartbeatInterval <= .zero {
            throw ConfigurationError("FramedClientConfiguration.heartbeatInterval", "must be positive when set")
        }
    }
}
