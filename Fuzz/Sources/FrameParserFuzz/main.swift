// libFuzzer target for the frame decoder (LarsWire: standard library only). Built by scripts/fuzz (Fuzz/Package.swift).
//
// Each input is fed to a FrameAccumulator in pieces whose sizes come from the input itself, and to FrameDecoder whole;
// the frames both yield must equal those of a simple reference reading of the same bytes, and parseDatagram must
// agree with the size rule.

import LarsWire

/// Reference: reads frames from a whole byte array the obvious way.
func referenceFrames(_ bytes: [UInt8], limit: Int) -> (frames: [(Int32, [UInt8])], invalid: Bool) {
    var out: [(Int32, [UInt8])] = []
    var i = 0
    while bytes.count - i >= 8 {
        let id = Int32(bitPattern: UInt32(bytes[i]) | UInt32(bytes[i + 1]) << 8 | UInt32(bytes[i + 2]) << 16
            | UInt32(bytes[i + 3]) << 24)
        let len = Int32(bitPattern: UInt32(bytes[i + 4]) | UInt32(bytes[i + 5]) << 8 | UInt32(bytes[i + 6]) << 16
            | UInt32(bytes[i + 7]) << 24)
        if len < 0 || Int(len) > limit { return (out, true) }
        if bytes.count - i - 8 < Int(len) { break }
        out.append((id, Array(bytes[(i + 8)..<(i + 8 + Int(len))])))
        i += 8 + Int(len)
    }
    return (out, false)
}

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzz(_ data: UnsafePointer<UInt8>, _ size: Int) -> Int32 {
    let bytes = Array(UnsafeBufferPointer(start: data, count: size))
    guard let first = bytes.first else { return 0 }
    let limit = 1 << (Int(first) % 20)  // 1 B .. 512 KiB
    let input = Array(bytes.dropFirst())
    let expected = referenceFrames(input, limit: limit)

    var acc = FrameAccumulator(maxBodyLength: limit)
    var got: [(Int32, [UInt8])] = []
    var invalid = false
    var offset = 0
    var step = 0
    outer: while offset < input.count {
        let piece = 1 + Int(input[(offset * 31 + step) % input.count]) % 97
        step += 1
        let end = min(input.count, offset + piece)
        acc.append(input[offset..<end])
        offset = end
        while true {
            do {
                guard let frame = try acc.nextFrame() else { break }
                got.append(frame)
            } catch {
                invalid = true
                break outer
            }
        }
    }
    precondition(invalid == expected.invalid, "accumulator and reference disagree on validity")
    precondition(got.count == expected.frames.count, "frame count differs")
    for (a, b) in zip(got, expected.frames) {
        precondition(a.0 == b.0 && a.1 == b.1, "frame differs")
    }

    // The whole input at once, as a connection's read hands it to the dispatcher.
    var whole: [(Int32, [UInt8])] = []
    let (consumed, stop) = input.withUnsafeBytes { raw in
        FrameDecoder(maxBodyLength: limit).decode(raw) { id, body in
            whole.append((id, Array(body)))
            return true
        }
    }
    if case .invalid = stop {
        precondition(expected.invalid, "decoder found an invalid header the reference did not")
    } else {
        precondition(!expected.invalid, "decoder missed an invalid header")
    }
    precondition(whole.count == expected.frames.count, "decoder frame count differs")
    precondition(consumed == whole.reduce(0) { $0 + 8 + $1.1.count }, "decoder consumed more than its frames")
    for (a, b) in zip(whole, expected.frames) {
        precondition(a.0 == b.0 && a.1 == b.1, "decoder frame differs")
    }

    input.withUnsafeBytes { raw in
        switch FrameParser.parseDatagram(raw, maxBodyLength: limit) {
        case .success(let frame):
            precondition(raw.count == 8 + frame.body.count, "datagram accepted with the wrong size")
        case .failure:
            break
        }
    }
    return 0
}
