import Logging

/// One log line captured by `CapturingLogHandler`.
public struct CapturedLog: Sendable {
    public var level: Logger.Level
    public var message: String
    public var metadata: [String: String]
}

/// A swift-log handler that keeps every line, for tests that check what a server logs.
public struct CapturingLogHandler: LogHandler {
    public let lines: Shared<[CapturedLog]>
    public var metadata: Logger.Metadata = [:]
    public var logLevel: Logger.Level

    public init(lines: Shared<[CapturedLog]>, logLevel: Logger.Level = .trace) {
        self.lines = lines
        self.logLevel = logLevel
    }

    public subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    public func log(event: LogEvent) {
        var all = metadata
        if let extra = event.metadata { all.merge(extra) { _, new in new } }
        let line = CapturedLog(level: event.level, message: "\(event.message)",
                               metadata: all.mapValues { "\($0)" })
        lines.update { $0.append(line) }
    }

    /// A logger whose lines at `level` and above land in `lines`.
    public static func logger(into lines: Shared<[CapturedLog]>, level: Logger.Level = .trace) -> Logger {
        Logger(label: "test.capture", factory: { _ in CapturingLogHandler(lines: lines, logLevel: level) })
    }
}
