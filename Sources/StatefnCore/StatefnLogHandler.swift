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
        let bytes = line(for: event)
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

    /// One log line, newline included. Called for every request, so it is written straight into bytes: the fixed
    /// fields first (a metadata key named like one replaces its value in place), then the metadata sorted by key.
    func line(for event: LogEvent) -> [UInt8] {
        let merged: Logger.Metadata =
            metadata.isEmpty ? event.metadata ?? [:] : metadata.merging(event.metadata ?? [:], uniquingKeysWith: { $1 })
        var bytes: [UInt8] = []
        bytes.reserveCapacity(320)
        bytes.append(UInt8(ascii: "{"))
        func field(_ key: String, _ value: Logger.Metadata.Value) {
            if bytes.count > 1 { bytes.append(UInt8(ascii: ",")) }
            JSONValue.appendString(key, to: &bytes)
            bytes.append(UInt8(ascii: ":"))
            switch value {
            case .string(let text): JSONValue.appendString(text, to: &bytes)
            case .stringConvertible(let convertible): JSONValue.appendString(convertible.description, to: &bytes)
            case .array, .dictionary: Self.json(value).encode(into: &bytes)
            }
        }
        field("time", merged["time"] ?? .string(Self.timestamp()))
        field("level", merged["level"] ?? .string(event.level.rawValue))
        field("msg", merged["msg"] ?? .string(event.message.description))
        field("logger", merged["logger"] ?? .string(label))
        for (key, value) in merged.sorted(by: { $0.key < $1.key }) where !Self.fixedKeys.contains(key) {
            field(key, value)
        }
        bytes.append(UInt8(ascii: "}"))
        bytes.append(UInt8(ascii: "\n"))
        return bytes
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

    private static func timestamp() -> String {
        var now = timespec()
        clock_gettime(CLOCK_REALTIME, &now)
        return Timestamp.rfc3339(ms: Int64(now.tv_sec) * 1000 + Int64(now.tv_nsec / 1_000_000))
    }
}
