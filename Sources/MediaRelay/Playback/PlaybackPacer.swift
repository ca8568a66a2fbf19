import SwitchyardCore

/// When each chunk of a playback is due, by the stream's own clock: a 25 fps movie is written 25 times a second,
/// neither faster nor slower. The first chunk anchors media time to the wall clock; every later chunk is due at the
/// anchor plus its media time since. A discontinuity (a clock jump in the stream) re-anchors one frame after the
/// previous chunk, and so does a reader that fell more than `maxLate` behind (a stalled disk): the playback goes
/// on from now instead of bursting to catch up. Plain value; times are monotonic nanoseconds given by the caller.
public struct PlaybackPacer: Sendable {
    /// Media clock ticks per second (PES timestamps: 90 kHz).
    public static let ticksPerSecond: UInt64 = 90_000

    /// How late a chunk may be before the pacer gives up on the lost time and re-anchors.
    public var maxLate: UInt64
    private var anchorWall: UInt64 = 0
    private var anchorMedia: UInt64 = 0
    private var lastDue: UInt64?
    private var lastMedia: UInt64 = 0
    /// The last frame period seen (40 ms until two chunks have been seen).
    private var frameNanoseconds: UInt64 = 40_000_000

    /// Times the pacer re-anchored (discontinuities and late readers).
    public private(set) var reanchors = 0

    public init(maxLate: Duration = .seconds(1)) {
        self.maxLate = maxLate.nanosecondsSaturated
    }

    /// The wall time (monotonic ns) at which `chunk` should be written, given that it is now `now`.
    public mutating func due(_ chunk: MediaChunk, now: UInt64) -> UInt64 {
        guard let previous = lastDue else {
            anchor(wall: now, media: chunk.time)
            return now
        }
        if chunk.discontinuity || chunk.time < lastMedia {
            reanchors += 1
            anchor(wall: previous &+ frameNanoseconds, media: chunk.time)
            return lastDue!
        }
        let gap = Self.nanoseconds(ticks: chunk.time - lastMedia)
        if gap > 0 { frameNanoseconds = gap }
        var due = anchorWall &+ Self.nanoseconds(ticks: chunk.time - anchorMedia)
        if now > due && now - due > maxLate {
            reanchors += 1
            anchor(wall: now, media: chunk.time)
            due = now
        }
        lastDue = due
        lastMedia = chunk.time
        return due
    }

    private mutating func anchor(wall: UInt64, media: UInt64) {
        anchorWall = wall
        anchorMedia = media
        lastDue = wall
        lastMedia = media
    }

    static func nanoseconds(ticks: UInt64) -> UInt64 {
        ticks / ticksPerSecond * 1_000_000_000 + ticks % ticksPerSecond * 1_000_000_000 / ticksPerSecond
    }
}
