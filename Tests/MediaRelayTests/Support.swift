import Foundation
import TestSupport

/// Movies made by Debian's ffmpeg for the tests (never committed): a test pattern and a tone, MPEG-TS.
enum TestMedia {
    struct Failure: Error, CustomStringConvertible {
        let description: String
    }

    /// Makes `seconds` of H.264 (`video`: an ffmpeg encoder name) at `fps`, a keyframe every `gop` frames, with
    /// MP2 audio, in a temporary .ts file.
    /// `bitrate` (e.g. "8M"): a constant video bitrate, for a movie larger than the kernel's socket buffers.
    static func movie(seconds: Int = 4, fps: Int = 25, gop: Int = 25, video: String = "libx264",
                      audio: String = "mp2", size: String = "320x240", bitrate: String? = nil) throws -> URL {
        let url = temporaryFile("movie-\(video)-\(fps)-\(gop)-\(seconds)", ".ts")
        let rate = bitrate.map { ["-b:v", $0, "-minrate", $0, "-maxrate", $0, "-bufsize", $0] } ?? []
        try run("ffmpeg", [
            "-v", "error", "-y",
            "-f", "lavfi", "-i", "testsrc2=size=\(size):rate=\(fps)",
            "-f", "lavfi", "-i", "sine=frequency=440:sample_rate=48000",
            "-t", "\(seconds)", "-g", "\(gop)", "-c:v", video, "-pix_fmt", "yuv420p",
        ] + rate + ["-c:a", audio, "-f", "mpegts", url.path])
        return url
    }

    static func run(_ tool: String, _ arguments: [String]) throws {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        process.arguments = [tool] + arguments
        let errors = Pipe()
        process.standardError = errors
        process.standardOutput = FileHandle.nullDevice
        do {
            try process.run()
        } catch {
            throw Failure(description: "cannot start \(tool) (scripts/test installs Debian's ffmpeg): \(error)")
        }
        let text = String(decoding: errors.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        process.waitUntilExit()
        guard process.terminationStatus == 0 else {
            throw Failure(description: "\(tool) failed (\(process.terminationStatus)): \(text)")
        }
    }

    static func bytes(_ url: URL) throws -> [UInt8] { Array(try Data(contentsOf: url)) }
}
