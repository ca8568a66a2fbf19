/// The bytes of one libFuzzer input, read front to back as a script of operations: small numbers for choices and
/// length-prefixed byte strings for message bodies. Reading past the end yields zeros and empty strings, so every
/// input is a valid (possibly short) script and the fuzzer's mutations stay meaningful.
public struct FuzzInput {
    private let data: [UInt8]
    private var offset = 0

    /// Copies the input libFuzzer passes to `LLVMFuzzerTestOneInput`.
    public init(_ data: UnsafePointer<UInt8>, _ size: Int) {
        self.data = Array(UnsafeBufferPointer(start: data, count: size))
    }

    /// Bytes for a test of the harness itself.
    public init(bytes: [UInt8]) { data = bytes }

    /// True when every byte has been read.
    public var isAtEnd: Bool { offset >= data.count }

    /// The next byte (0 past the end).
    public mutating func byte() -> UInt8 {
        guard offset < data.count else { return 0 }
        defer { offset += 1 }
        return data[offset]
    }

    /// A number in `0..<bound` from one byte (`bound` at most 256).
    public mutating func choice(_ bound: Int) -> Int { Int(byte()) % max(bound, 1) }

    /// A little-endian 16-bit number.
    public mutating func uint16() -> UInt16 { UInt16(byte()) | UInt16(byte()) << 8 }

    /// A little-endian 32-bit number.
    public mutating func uint32() -> UInt32 { UInt32(uint16()) | UInt32(uint16()) << 16 }

    /// A little-endian 64-bit number.
    public mutating func uint64() -> UInt64 { UInt64(uint32()) | UInt64(uint32()) << 32 }

    /// A byte string of a length read first (two bytes, capped at `limit` and at what is left).
    public mutating func bytes(limit: Int = 4096) -> [UInt8] {
        let requested = Int(uint16())
        let start = min(offset, data.count)
        let count = min(requested, limit, data.count - start)
        offset = start + count
        return Array(data[start..<(start + count)])
    }

    /// A short text from a small alphabet (so names collide and rooms are shared), or raw bytes decoded as UTF-8
    /// with repair when the first byte says so.
    public mutating func text(limit: Int = 64) -> String {
        let mode = byte()
        if mode & 0x80 != 0 { return String(decoding: bytes(limit: limit), as: UTF8.self) }
        let alphabet: [Character] = ["a", "b", "c", "_", "1", " ", "é", "\u{301}"]
        let count = Int(mode) % 8
        return String((0..<count).map { _ in alphabet[choice(alphabet.count)] })
    }
}

/// A mock monotonic clock in nanoseconds, advanced by the script.
public struct FuzzClock {
    /// The current time (starts at one second, so "0: never" stamps stay distinct).
    public private(set) var now: UInt64 = 1_000_000_000

    public init() {}

    /// Moves the clock forward by a step chosen from the input: nothing, milliseconds, seconds or minutes.
    public mutating func advance(_ input: inout FuzzInput) {
        let amount = UInt64(input.byte())
        switch input.choice(4) {
        case 0: now += amount
        case 1: now += amount * 1_000_000
        case 2: now += amount * 1_000_000_000
        default: now += amount * 60_000_000_000
        }
    }

    /// `now` as a `Duration` since the start.
    public var elapsed: Duration { .nanoseconds(Int64(now)) }
}

/// Fails the run (a crash libFuzzer saves) when `condition` is false; the message names the broken invariant.
@inline(__always)
public func invariant(_ condition: @autoclosure () -> Bool, _ message: @autoclosure () -> String,
                      file: StaticString = #fileID, line: UInt = #line) {
    if !condition() { fatalError("invariant broken: \(message())", file: file, line: line) }
}
