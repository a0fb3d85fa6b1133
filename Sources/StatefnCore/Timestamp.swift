// RFC 3339 times in UTC with milliseconds, as the logs, the event log and the listings show them.
#if canImport(Glibc)
    import Glibc
#endif

enum Timestamp {
    /// `2026-12-01T10:42:52.123Z` for milliseconds since the epoch, written digit by digit: no intermediate strings.
    static func rfc3339(ms: Int64) -> String {
        var seconds = time_t(ms / 1000)
        var parts = tm()
        gmtime_r(&seconds, &parts)
        return String(unsafeUninitializedCapacity: 24) { text in
            var at = 0
            func put(_ value: Int, _ width: Int, then separator: UInt8?) {
                var value = value
                for index in stride(from: at + width - 1, through: at, by: -1) {
                    text[index] = UInt8(ascii: "0") + UInt8(value % 10)
                    value /= 10
                }
                at += width
                if let separator {
                    text[at] = separator
                    at += 1
                }
            }
            put(Int(parts.tm_year) + 1900, 4, then: UInt8(ascii: "-"))
            put(Int(parts.tm_mon) + 1, 2, then: UInt8(ascii: "-"))
            put(Int(parts.tm_mday), 2, then: UInt8(ascii: "T"))
            put(Int(parts.tm_hour), 2, then: UInt8(ascii: ":"))
            put(Int(parts.tm_min), 2, then: UInt8(ascii: ":"))
            put(Int(parts.tm_sec), 2, then: UInt8(ascii: "."))
            put(Int(ms % 1000), 3, then: UInt8(ascii: "Z"))
            return at
        }
    }
}
