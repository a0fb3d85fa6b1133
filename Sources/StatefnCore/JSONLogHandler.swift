// Logs as one JSON object per line on stderr (DESIGN.md section 7), so log shippers need no parsing rules.
import Logging
import StatefnJSON
import Synchronization

#if canImport(Glibc)
    import Glibc
#endif

public struct JSONLogHandler: LogHandler {
    public var metadata: Logger.Metadata = [:]
    public var logLevel: Logger.Level = .info
    private let label: String
    private static let output = Mutex(())

    public init(label: String) { self.label = label }

    public subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    public func log(event: LogEvent) {
        // Called for every request, so the line is built without a merged dictionary when the handler has no
        // metadata of its own, and the fixed fields are appended rather than looked up.
        let merged: Logger.Metadata =
            metadata.isEmpty ? event.metadata ?? [:] : metadata.merging(event.metadata ?? [:], uniquingKeysWith: { $1 })
        var pairs: [(String, JSONValue)] = [
            ("time", .string(Self.timestamp())), ("level", .string(event.level.rawValue)),
            ("msg", .string(event.message.description)), ("logger", .string(label)),
        ]
        let sorted = merged.sorted(by: { $0.key < $1.key })
        let line: JSONObject
        if sorted.contains(where: { Self.fixedKeys.contains($0.key) }) {
            // A metadata key named like a fixed field replaces its value in place, as it always has.
            var replaced = JSONObject(pairs)
            for (key, value) in sorted { replaced[key] = Self.json(value) }
            line = replaced
        } else {
            pairs.reserveCapacity(4 + sorted.count)
            for (key, value) in sorted { pairs.append((key, Self.json(value))) }
            line = JSONObject(pairs)
        }
        var bytes = JSONValue.object(line).encoded()
        bytes.append(UInt8(ascii: "\n"))
        // One write per line, under a lock, so lines from different threads never interleave.
        Self.output.withLock { _ in
            bytes.withUnsafeBytes { buffer in
                var offset = 0
                while offset < buffer.count {
                    let n = write(2, buffer.baseAddress! + offset, buffer.count - offset)
                    if n < 0, errno == EINTR { continue }
                    guard n > 0 else { return }
                    offset += n
                }
            }
        }
    }

    private static let fixedKeys: Set<String> = ["time", "level", "msg", "logger"]

    private static func json(_ value: Logger.Metadata.Value) -> JSONValue {
        switch value {
        case .string(let s): return .string(s)
        case .stringConvertible(let c): return .string(c.description)
        case .array(let list): return .array(list.map(json))
        case .dictionary(let d): return .object(JSONObject(d.sorted { $0.key < $1.key }.map { ($0.key, json($0.value)) }))
        }
    }

    /// RFC 3339 UTC with milliseconds, written digit by digit: no intermediate strings.
    private static func timestamp() -> String {
        var now = timespec()
        clock_gettime(CLOCK_REALTIME, &now)
        var seconds = now.tv_sec
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
            put(now.tv_nsec / 1_000_000, 3, then: UInt8(ascii: "Z"))
            return at
        }
    }
}
