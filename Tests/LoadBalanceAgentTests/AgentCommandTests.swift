import Foundation
import TestSupport
import Testing

#if canImport(Glibc)
import Glibc
#endif

@Suite("switchyard agent (the command)")
struct AgentCommandTests {
    @Test("a UDP port already bound: the agent exits 1 with one line naming the failure")
    func portTaken() throws {
        let taken = try boundLoopbackSocket(type: Int32(SOCK_DGRAM.rawValue))
        defer { close(taken.fd) }
        let process = Process()
        process.executableURL = URL(fileURLWithPath: switchyardExecutable())
        process.arguments = ["agent", "--ports", "\(taken.port),0,0", "--names", "127.0.0.1:1",
                             "--reporter", "127.0.0.1:1"]
        let errors = Pipe()
        let output = Pipe()
        process.standardError = errors
        process.standardOutput = output
        try process.run()
        let text = String(decoding: errors.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        let printed = String(decoding: output.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        process.waitUntilExit()
        #expect(process.terminationStatus == 1)
        let lines = text.split(separator: "\n")
        #expect(lines.count == 1, "\(text)")
        #expect(lines.first?.contains("agent: cannot start:") == true, "\(text)")
        #expect(!printed.contains("agent listening"), "\(printed)")
    }
}
