import ArgumentParser
import Foundation

/// `--json`: a bench command prints its result as one JSON object on the last line of stdout (for scripts/bench),
/// instead of the human summary.
struct JSONOutputOption: ParsableArguments {
    @Flag(help: "Print the result as one JSON object (for scripts) instead of the human summary.")
    var json = false

    /// Prints `value` as one line of JSON (keys sorted).
    func emit(_ value: some Encodable) throws {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        encoder.keyEncodingStrategy = .convertToSnakeCase
        announce(String(decoding: try encoder.encode(value), as: UTF8.self))
    }
}
