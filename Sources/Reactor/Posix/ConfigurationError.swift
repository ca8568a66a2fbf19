/// A reactor configuration that cannot work: thrown by the `validate()` of each configuration struct (and by
/// `TCPServer.start()`, which validates its configuration before binding).
public struct ConfigurationError: Error, Equatable, Sendable, CustomStringConvertible {
    /// The setting, as its property is named (`ServerConfiguration.port`).
    public let setting: String
    /// What is wrong with it.
    public let problem: String

    public init(_ setting: String, _ problem: String) {
        self.setting = setting
        self.problem = problem
    }

    public var description: String { "\(setting): \(problem)" }
}

extension ConnectionOptions {
    /// Throws when the water marks cannot work (the low mark must be below the high one) or the linger is negative.
    public func validate() throws(ConfigurationError) {
        if highWaterMark < 1 { throw ConfigurationError("ConnectionOptions.highWaterMark", "must be positive, got \(highWaterMark)") }
        if lowWaterMark < 0 || lowWaterMark >= highWaterMark {
            throw ConfigurationError("ConnectionOptions.lowWaterMark",
                                     "must be 0 ..< highWaterMark (\(highWaterMark)), got \(lowWaterMark)")
        }
        if lingerTimeout < .zero { throw ConfigurationError("ConnectionOptions.lingerTimeout", "must not be negative") }
        if let idleTimeout, idleTimeout <= .zero {
            throw ConfigurationError("ConnectionOptions.idleTimeout", "must be positive when set (nil: off)")
        }
    }
}

extension ServerConfiguration {
    /// Throws the first setting that cannot work.
    public func validate() throws(ConfigurationError) {
        if !(0...65535).contains(port) { throw ConfigurationError("ServerConfiguration.port", "must be 0...65535, got \(port)") }
        if backlog < 1 { throw ConfigurationError("ServerConfiguration.backlog", "must be positive, got \(backlog)") }
        if maxConnections < 1 {
            throw ConfigurationError("ServerConfiguration.maxConnections", "must be positive, got \(maxConnections)")
        }
        try connection.validate()
    }
}

extension ClientConfiguration {
    /// Throws the first setting that cannot work.
    public func validate() throws(ConfigurationError) {
        if !(1...65535).contains(port) { throw ConfigurationError("ClientConfiguration.port", "must be 1...65535, got \(port)") }
        if connectTimeout <= .zero { throw ConfigurationError("ClientConfiguration.connectTimeout", "must be positive") }
        if initialBackoff <= .zero || maxBackoff < initialBackoff {
            throw ConfigurationError("ClientConfiguration.initialBackoff",
                                     "must be positive and at most maxBackoff (\(maxBackoff)), got \(initialBackoff)")
        }
        try connection.validate()
    }
}

extension LoopConfiguration {
    /// Throws the first setting that cannot work.
    public func validate() throws(ConfigurationError) {
        if scratchBytes < 4096 { throw ConfigurationError("LoopConfiguration.scratchBytes", "must be at least 4096, got \(scratchBytes)") }
        if poolCapBytes < 0 { throw ConfigurationError("LoopConfiguration.poolCapBytes", "must not be negative") }
        if poolDecayInterval <= .zero {
            throw ConfigurationError("LoopConfiguration.poolDecayInterval",
                                     "must be positive, got \(poolDecayInterval)")
        }
        if trimThresholdBytes < 0 {
            throw ConfigurationError("LoopConfiguration.trimThresholdBytes", "must not be negative (0: never trim)")
        }
        if maxBufferBytes < scratchBytes {
            throw ConfigurationError("LoopConfiguration.maxBufferBytes",
                                     "must be at least scratchBytes (\(scratchBytes)), got \(maxBufferBytes)")
        }
        if busyPoll < .zero { throw ConfigurationError("LoopConfiguration.busyPoll", "must not be negative") }
    }
}
