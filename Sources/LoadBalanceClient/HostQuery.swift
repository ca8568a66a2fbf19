import LoadBalancing

/// One service of a batch GetHost (``LoadBalanceClient/getHosts(_:)``): a route, and a key when the host should be
/// chosen by key (as `getHost(modid:cmdid:key:)`).
///
/// ```swift
/// let answers = try await client.getHosts([HostQuery(modid: 1, cmdid: 1),
///                                          HostQuery(modid: 2, cmdid: 1, key: "room-7")])
/// ```
public struct HostQuery: Sendable, Hashable, CustomStringConvertible {
    public var modid: Int32
    public var cmdid: Int32
    /// The key (nil: round robin).
    public var key: [UInt8]?

    public init(modid: Int32, cmdid: Int32, key: [UInt8]? = nil) {
        self.modid = modid
        self.cmdid = cmdid
        self.key = key
    }

    /// A query by key, with the key's UTF-8 bytes.
    public init(modid: Int32, cmdid: Int32, key: String) {
        self.init(modid: modid, cmdid: cmdid, key: Array(key.utf8))
    }

    /// `modid:cmdid` or `modid:cmdid:key` (the form `switchyard gethost --batch` takes).
    public var description: String {
        "\(modid):\(cmdid)" + (key.map { ":" + String(decoding: $0, as: UTF8.self) } ?? "")
    }

    /// Parses `modid:cmdid` or `modid:cmdid:key` (the key is the rest, colons included); nil when malformed.
    public init?(_ text: some StringProtocol) {
        let parts = text.split(separator: ":", maxSplits: 2, omittingEmptySubsequences: false)
        guard parts.count >= 2, let modid = Int32(parts[0]), let cmdid = Int32(parts[1]) else { return nil }
        if parts.count == 3 {
            guard !parts[2].isEmpty else { return nil }
            self.init(modid: modid, cmdid: cmdid, key: String(parts[2]))
        } else {
            self.init(modid: modid, cmdid: cmdid)
        }
    }
}
