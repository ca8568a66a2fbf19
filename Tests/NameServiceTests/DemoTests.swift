import Foundation
import Testing

extension NameServiceSocketTests {
    @Suite("switchyard demo")
    struct DemoTests {
        @Test("a short demo exits 0 and shows the failing host go to overload and come back")
        func shortDemo() async throws {
            let out = try await runSwitchyard(["demo", "--seconds", "8"], timeout: .seconds(60))
            #expect(out.status == 0, "stderr: \(out.stderr)")
            let text = out.stdout
            #expect(text.contains("starts refusing connections"), "\(text)")
            #expect(text.contains("idle -> overloaded"), "\(text)")
            #expect(text.contains("overloaded -> idle"), "\(text)")
            #expect(text.contains("went to overload, was probed and came back to idle"), "\(text)")
            #expect(text.contains("summary:"))
            // Not a terminal: plain lines, no ANSI sequences.
            #expect(!text.contains("\u{1B}["))
            if let overload = text.range(of: "idle -> overloaded"), let back = text.range(of: "overloaded -> idle") {
                #expect(overload.lowerBound < back.lowerBound)
            }
        }
    }
}
