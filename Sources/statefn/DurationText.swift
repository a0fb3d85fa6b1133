// Durations as flags and STATEFN_* variables spell them: a whole number and a unit, like 500ms, 2s, 90m, 24h or 7d.
import ArgumentParser

enum DurationText {
    /// Parses `text`, or refuses it with a message that names `flag`.
    static func parse(_ text: String, flag: String) throws -> Duration {
        let digits = text.prefix(while: \.isASCII).prefix(while: \.isNumber)
        let unit = text.dropFirst(digits.count)
        let perUnit: Int64? =
            switch unit {
            case "ms": 1
            case "s": 1000
            case "m": 60_000
            case "h": 3_600_000
            case "d": 86_400_000
            default: nil
            }
        guard let perUnit, let count = Int64(digits), count <= 10 * 365 * 86_400_000 / perUnit else {
            throw ValidationError("\(flag) must be a whole number with a unit (ms, s, m, h or d), like 2s; got \(text)")
        }
        return .milliseconds(count * perUnit)
    }
}
