import Reactor

/// A piece of a transport stream that the relay writes at once: whole 188-byte packets from the start of one frame
/// of the clock stream (the first video stream, else the first stream) up to the next, with the audio and tables
/// that came between. A 25 fps movie gives 25 chunks a second.
public struct MediaChunk: Sendable {
    /// Whole TS packets.
    public var bytes: [UInt8]
    /// Media time of the frame, 90 kHz ticks, unwrapped (the 33-bit clock does not wrap here): its DTS, else its
    /// PTS, else the last PCR.
    public var time: UInt64
    /// The frame is a random access point: a player can start decoding here.
    public var keyframe: Bool
    /// The stream's clock jumps before this chunk (a discontinuity indicator, or a jump the chunker detected).
    public var discontinuity: Bool
    /// The latest PAT and PMT packets, for a viewer that starts at this chunk (set on keyframes).
    public var programHeader: [UInt8]
    /// `bytes` again, in the playback's shared memory file, when it has one: consecutive chunks are one range of
    /// the file, so a viewer's batch is sent from it with one sendfile (no copy per viewer). Set by the playback when
    /// the chunk is due; the chunker never sets it.
    var shared: BroadcastFile.Region?
    /// Where the chunk's bytes start in the bytes fed to the chunker, when they are one run of them (nil: bytes were
    /// skipped inside the chunk). For a file read from its start, the chunk is that range of the file.
    public var sourceOffset: Int64?
    /// The file the chunk is a range of (at `sourceOffset`), when its playback reads one: HTTP viewers are sent the
    /// range with sendfile from the file itself. Set by the file's reader; the chunker never sets it.
    var sourceFile: MediaSourceFile?
    /// When the chunk is due to its viewers (the relay's monotonic clock, ns), for a chunk handed to the rings ahead of
    /// time (a file's playback hands them over one write beat early); nil: due when it arrives (a publisher's). Set
    /// by the playback; the chunker never sets it.
    public var due: UInt64?

    public init(bytes: [UInt8], time: UInt64, keyframe: Bool, discontinuity: Bool = false,
                programHeader: [UInt8] = [], sourceOffset: Int64? = nil) {
        self.bytes = bytes
        self.sourceOffset = sourceOffset
        self.time = time
        self.keyframe = keyframe
        self.discontinuity = discontinuity
        self.programHeader = programHeader
    }
}

/// Cuts a transport stream into `MediaChunk`s, fed in pieces of any size (a file read, a socket read, one byte).
/// Finds the program through the PAT and PMT, cuts at each PES start of the clock stream, takes timestamps from
/// the PES headers, and finds keyframes from the random access indicator or from the elementary stream itself.
/// Bytes that are not packets are skipped (the chunker looks for two sync bytes 188 apart again) and counted.
/// A plain value: no I/O, no clock.
public struct TSChunker {
    /// Why a stream cannot be relayed.
    public enum StreamError: Error, Equatable, Sendable, CustomStringConvertible {
        /// No run of transport stream packets in the bytes read.
        case notTransportStream
        /// Packets, but no program table, or no timestamps on the program's streams: the relay could not pace it.
        case noClock(String)

        public var description: String {
            switch self {
            case .notTransportStream: return "not an MPEG transport stream (no 0x47 sync bytes 188 apart)"
            case .noClock(let why): return "the stream's clock cannot be read: \(why)"
            }
        }
    }

    /// Largest jump between consecutive frames taken as the stream's own timing; a longer one is a discontinuity
    /// (a spliced file, a restarted encoder), and pacing goes on from the last frame.
    public static let maxFrameGap: UInt64 = 5 * 90_000

    private var pending: [UInt8] = []
    private var current: [UInt8] = []
    /// Offset in the fed bytes of `pending[0]`, and of `current`'s first byte (nil: not one run).
    private var pendingBase: Int64 = 0
    private var currentStart: Int64?
    private var currentTime: UInt64?
    private var currentKeyframe = false
    private var currentDiscontinuity = false
    private var currentHeader: [UInt8] = []
    private var pat = SectionAssembler()
    private var pmt = SectionAssembler()
    private var pmtPID: UInt16?
    private var patPacket: [UInt8] = []
    private var pmtPacket: [UInt8] = []
    private var lastPCR: UInt64?
    private var lastRaw: UInt64?
    private var unwrapped: UInt64 = 0
    private var pendingDiscontinuity = false
    private var synced = false

    /// Untimed bytes held before the first timed frame at most (tables, a partial frame); beyond it they are dropped.
    public static let maxUntimedBytes = 1 << 20

    /// The program's streams, once the PMT has been read.
    public private(set) var program: ProgramMap?
    /// Packets read.
    public private(set) var packets = 0
    /// Bytes skipped while looking for packet sync.
    public private(set) var skippedBytes = 0
    /// Chunks cut so far.
    public private(set) var chunks = 0
    /// Chunks marked as keyframes.
    public private(set) var keyframes = 0

    public init() {}

    /// Feeds bytes; returns the chunks they completed (a chunk is complete when the next one starts).
    public mutating func feed(_ bytes: some Collection<UInt8>) -> [MediaChunk] {
        pending.append(contentsOf: bytes)
        var out: [MediaChunk] = []
        var i = 0
        let n = pending.count
        while n - i >= TSPacket.size {
            if !synced {
                // Sync is found again only where two sync bytes stand 188 apart.
                guard pending[i] == TSPacket.syncByte else {
                    i += 1
                    skippedBytes += 1
                    continue
                }
                guard n - i >= 2 * TSPacket.size else { break }  // wait for the byte that confirms it
                guard pending[i + TSPacket.size] == TSPacket.syncByte else {
                    i += 1
                    skippedBytes += 1
                    continue
                }
                synced = true
            }
            let offset = pendingBase + Int64(i)
            let consumed = pending.withUnsafeBytes { raw in
                handle(UnsafeRawBufferPointer(rebasing: raw[i..<i + TSPacket.size]), at: offset, into: &out)
            }
            guard consumed else {
                synced = false
                i += 1
                skippedBytes += 1
                continue
            }
            i += TSPacket.size
        }
        pending.removeFirst(i)
        pendingBase += Int64(i)
        return out
    }

    /// Ends the stream: the last chunk, if any.
    public mutating func finish() -> MediaChunk? {
        pending.removeAll()
        return takeCurrent()
    }

    /// Checks that what has been fed so far (a probe's read of the file's start) can be relayed: packets, a
    /// program, a clock.
    public func check() throws(StreamError) {
        guard packets > 0 else { throw .notTransportStream }
        guard let program else { throw .noClock("no program map table (PAT/PMT)") }
        guard let clock = program.clockStream else { throw .noClock("the program has no streams") }
        guard currentTime != nil || chunks > 0 else {
            throw .noClock("no timestamps on stream \(clock.pid) (\(clock.kind.codecName))")
        }
    }

    // MARK: - Packets

    /// Handles one packet; false when it is not a valid packet (resync).
    private mutating func handle(_ raw: UnsafeRawBufferPointer, at offset: Int64,
                                 into out: inout [MediaChunk]) -> Bool {
        guard let packet = try? TSPacket(raw) else { return false }
        packets += 1
        if let pcr = packet.pcr, packet.pid == program?.pcrPID { lastPCR = pcr }
        if packet.discontinuity { pendingDiscontinuity = true }
        let payload = UnsafeRawBufferPointer(rebasing: raw[packet.payloadOffset...])
        if packet.pid == TSConstants.patPID, packet.hasPayload, !packet.transportError {
            patPacket = Array(raw)
            for section in pat.feed(payload, unitStart: packet.payloadUnitStart) {
                if let pid = PSI.pmtPID(fromPAT: section) { pmtPID = pid }
            }
        } else if packet.pid == pmtPID, packet.hasPayload, !packet.transportError {
            pmtPacket = Array(raw)
            for section in pmt.feed(payload, unitStart: packet.payloadUnitStart) {
                if let map = PSI.programMap(fromPMT: section) { program = map }
            }
        } else if let clock = program?.clockStream, packet.pid == clock.pid, packet.payloadUnitStart,
                  packet.hasPayload, !packet.scrambled {
            if let chunk = takeCurrent() { out.append(chunk) }
            startChunk(packet, payload: payload, kind: clock.kind)
        }
        if current.isEmpty {
            currentStart = offset
        } else if let start = currentStart, start + Int64(current.count) != offset {
            currentStart = nil  // bytes were skipped inside the chunk
        }
        current.append(contentsOf: raw)
        if currentTime == nil, current.count > Self.maxUntimedBytes {
            skippedBytes += current.count
            current.removeAll(keepingCapacity: true)
        }
        return true
    }

    private mutating func startChunk(_ packet: TSPacket, payload: UnsafeRawBufferPointer,
                                     kind: TSConstants.StreamKind) {
        let stamps = PESHeader.timestamps(payload)
        let raw = stamps.dts ?? stamps.pts ?? lastPCR.map { $0 / 300 }
        if let raw { currentTime = unwrap(raw) }  // else: the previous frame's time
        var key = packet.randomAccess
        if !key, let offset = PESHeader.dataOffset(payload) {
            key = RandomAccess.startsAccessPoint(UnsafeRawBufferPointer(rebasing: payload[offset...]), kind: kind)
        }
        currentKeyframe = key
        currentDiscontinuity = pendingDiscontinuity
        pendingDiscontinuity = false
        currentHeader = key ? patPacket + pmtPacket : []
    }

    private mutating func takeCurrent() -> MediaChunk? {
        guard !current.isEmpty else { return nil }
        guard let time = currentTime else {
            // Bytes before the first timed frame (tables, a partial frame) go with the first chunk, up to a bound.
            if current.count > Self.maxUntimedBytes {
                skippedBytes += current.count
                current.removeAll(keepingCapacity: true)
            }
            return nil
        }
        defer { current.removeAll(keepingCapacity: true) }
        chunks += 1
        if currentKeyframe { keyframes += 1 }
        return MediaChunk(bytes: current, time: time, keyframe: currentKeyframe, discontinuity: currentDiscontinuity,
                          programHeader: currentHeader, sourceOffset: currentStart)
    }

    /// Turns a 33-bit timestamp into a monotonic-ish 64-bit one: small steps either way keep their sign (B-frame
    /// PTS, audio/video interleave); a jump beyond `maxFrameGap` is a discontinuity and time goes on from where it
    /// was (one frame later is not known here, so the same time).
    private mutating func unwrap(_ raw: UInt64) -> UInt64 {
        let modulus: UInt64 = 1 << 33
        defer { lastRaw = raw }
        guard let last = lastRaw else {
            unwrapped = raw
            return unwrapped
        }
        let forward = (raw &+ modulus &- last) % modulus
        if forward <= Self.maxFrameGap {
            unwrapped &+= forward
        } else if modulus - forward <= Self.maxFrameGap {
            unwrapped = unwrapped >= modulus - forward ? unwrapped - (modulus - forward) : 0
        } else {
            pendingDiscontinuity = true
        }
        return unwrapped
    }
}
