import Foundation

/// The `switchyard` executable built next to the test bundle.
public func switchyardExecutable() -> String { builtExecutable(named: "switchyard") }

/// The `switchyard-echo` executable built next to the test bundle: the echo server on the reactor alone, without
/// the rest of the command line (what the reactor's tests start).
public func switchyardEchoExecutable() -> String { builtExecutable(named: "switchyard-echo") }

/// The path of the executable `name` in the build folder of the test runner (which may live inside a bundle
/// folder: walk up to the build folder); a path that does not exist when it is not built, so a test can say so.
private func builtExecutable(named name: String) -> String {
    let exe = URL(fileURLWithPath: "/proc/self/exe").resolvingSymlinksInPath()
    var dir = exe.deletingLastPathComponent()
    for _ in 0..<4 {
        let candidate = dir.appendingPathComponent(name).path
        if FileManager.default.isExecutableFile(atPath: candidate) { return candidate }
        dir = dir.deletingLastPathComponent()
    }
    return dir.appendingPathComponent(name).path
}

/// Runs `switchyard ARGS` and returns its exit status and output (the command must end by itself).
public func runSwitchyard(_ arguments: [String]) throws -> (status: Int32, stdout: String, stderr: String) {
    let process = Process()
    process.executableURL = URL(fileURLWithPath: switchyardExecutable())
    process.arguments = arguments
    let out = Pipe(), err = Pipe()
    process.standardOutput = out
    process.standardError = err
    try process.run()
    let stdout = out.fileHandleForReading.readDataToEndOfFile()
    let stderr = err.fileHandleForReading.readDataToEndOfFile()
    process.waitUntilExit()
    return (process.terminationStatus, String(decoding: stdout, as: UTF8.self), String(decoding: stderr, as: UTF8.self))
}
