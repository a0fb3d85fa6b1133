// Logs on stderr (DESIGN.md section 7): one JSON object per line, so log shippers need no parsing rules, or, for a
// person at a terminal, one readable line: time, level, message, then key=value pairs.
import Logging
import StatefnJSON
import Synchronization

#if canImport(Glibc)
    import Glibc
#endif

public struct StatefnLogHandler: LogHandler {
    public var metadata: Logger.Metadata = [:]
    public var logLevel: Logger.Level = .info
    private let label: String
    private let format: LogFormat
    private static let output = Mutex(())

    public init(label: String, format: LogFormat = .json) {
        self.label = label
        self.format = format
    }

    /// JSON, unless stderr is a terminal.
    public static var defaultFormat: LogFormat { isatty(2) == 1 ? .text : .json }

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
        if format == .text { return textLine(event, merged) }
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

    /// `2026-12-01T13:00:00.123Z info    request  method=POST status=200`: a value with spaces, quotes or control
    /// characters is quoted and escaped as JSON, so one event is always one line.
    private func textLine(_ event: LogEvent, _ merged: Logger.Metadata) -> [UInt8] {
        var text = merged["time"].map { "\($0)" } ?? Self.timestamp()
        let level = event.level.rawValue
        text += " " + level + String(repeating: " ", count: max(1, 9 - level.count))
        text += Self.textValue(event.message.description)
        for (key, value) in merged.sorted(by: { $0.key < $1.key }) where key != "time" {
            let rendered: String =
                switch value {
                case .string(let string): string
                case .stringConvertible(let convertible): convertible.description
                case .array, .dictionary: String(decoding: Self.json(value).encoded(), as: UTF8.self)
                }
            text += "  \(key)=" + Self.textValue(rendered)
        }
        return Array((text + "\n").utf8)
    }

    private static func textValue(_ value: String) -> String {
        func isPlain(_ scalar: Unicode.Scalar) -> Bool {
            scalar.value > 0x20 && scalar != "\"" && scalar != "\\"
                && ![.control, .format, .lineSeparator, .paragraphSeparator].contains(scalar.properties.generalCategory)
        }
        guard value.isEmpty || !value.unicodeScalars.allSatisfy(isPlain) else { return value }
        // Quoted, with every control or format character (C0, DEL, C1 such as CSI, bidi overrides) as \uXXXX:
        // nothing a function writes to its stderr can steer the operator's terminal.
        var text = "\""
        for scalar in value.unicodeScalars {
            switch scalar {
            case "\"": text += "\\\""
            case "\\": text += "\\\\"
            case "\n": text += "\\n"
            case "\t": text += "\\t"
            case " ": text += " "
            case _ where isPlain(scalar): text.unicodeScalars.append(scalar)
            default:
                let hex = String(scalar.value, radix: 16)
                text += "\\u" + String(repeating: "0", count: max(0, 4 - hex.count)) + hex
            }
        }
        return text + "\""
    }

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
