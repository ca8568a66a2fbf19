import Foundation

/// The `switchyard` executable built next to the test bundle.
public func switchyardExecutable() -> String {
    let exe = URL(fileURLWithPath: "/proc/self/exe").resolvingSymlinksInPath()
    var dir = exe.deletingLastPathComponent()
    // The test runner may live inside a bundle folder; walk up to the build folder.
    for _ in 0..<4 {
        let candidate = dir.appendingPathComponent("switchyard").path
        if FileManager.default.isExecutableFile(atPath: candidate) { return candidate }
        dir = dir.deletingLastPathComponent()
    }
    return dir.appendingPathComponent("switchyard").path
}
