/// The members of a room, grouped by loop: a broadcast is one task per loop, each with the list of its members.
///
/// ```
/// byLoop:    [0: [7, 3, 12],  1: [4, 9]]      ids per loop, in no order
/// positions: [7: 0, 3: 1, 12: 2, 4: 0, 9: 1]  where each id is in its list (removal swaps in the last one)
/// ```
///
/// A value: a broadcast action holds a copy (shared storage, no allocation) while the room changes on.
struct RoomMembers: Sendable, Equatable {
    /// Member ids per loop index.
    private(set) var byLoop: [Int: [UInt64]] = [:]
    private var positions: [UInt64: Int] = [:]

    /// Members in all.
    var count: Int { positions.count }

    func contains(_ id: UInt64) -> Bool { positions[id] != nil }

    /// Adds `peer`; false when it is a member already.
    @discardableResult
    mutating func insert(_ peer: ChatPeer) -> Bool {
        guard positions[peer.id] == nil else { return false }
        positions[peer.id] = byLoop[peer.loop, default: []].count
        byLoop[peer.loop, default: []].append(peer.id)
        return true
    }

    /// Removes `peer`; false when it was not a member.
    @discardableResult
    mutating func remove(_ peer: ChatPeer) -> Bool {
        guard let position = positions.removeValue(forKey: peer.id), var list = byLoop.removeValue(forKey: peer.loop)
        else { return false }
        let last = list.removeLast()
        if last != peer.id {
            list[position] = last
            positions[last] = position
        }
        if !list.isEmpty { byLoop[peer.loop] = list }
        return true
    }
}

/// One room: its members, the last sequence number given, and the in-memory tail of its history.
struct ChatRoom: Sendable {
    var members = RoomMembers()
    var lastSequence: UInt64
    var history: [Switchyard_Chat_RoomMessage]

    init(lastSequence: UInt64, history: [Switchyard_Chat_RoomMessage]) {
        self.lastSequence = lastSequence
        self.history = history
    }

    /// Keeps `m` in the history tail of at most `keep` messages.
    mutating func record(_ m: Switchyard_Chat_RoomMessage, keep: Int) {
        guard keep > 0 else { return }
        history.append(m)
        if history.count > keep { history.removeFirst(history.count - keep) }
    }
}

/// One connection's chat session.
struct ChatSession: Sendable {
    let peer: ChatPeer
    var user: String?
    var rooms: Set<String> = []
    var tokens: Double
    var lastRefill: UInt64
    var cutOff = false
    var loginPending = false
    /// Requests of this connection waiting for storage or the KDF.
    var jobsInFlight = 0

    init(peer: ChatPeer, tokens: Double, now: UInt64) {
        self.peer = peer
        self.tokens = tokens
        lastRefill = now
    }

    /// Token bucket of `rate` messages per second (burst `rate`), refilled continuously up to `now`.
    mutating func takeToken(now: UInt64, rate: Double) -> Bool {
        let elapsed = Double(now &- lastRefill) / 1e9
        tokens = min(rate, tokens + elapsed * rate)
        lastRefill = now
        if tokens >= 1 {
            tokens -= 1
            return true
        }
        return false
    }
}
