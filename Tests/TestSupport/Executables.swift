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
