// CONTRACT STUB: the public API the rest of statefn codes against. The JSON helper replaces these bodies.

/// Limits applied while parsing. Client input gets `client`; worker output gets `worker`.
public struct JSONLimits: Sendable {
    public var maxBytes: Int
    public var maxDepth: Int
    public var rejectDuplicateKeys: Bool
    public init(maxBytes: Int, maxDepth: Int = 64, rejectDuplicateKeys: Bool = true) {
        self.maxBytes = maxBytes
        self.maxDepth = maxDepth
        self.rejectDuplicateKeys = rejectDuplicateKeys
    }
    public static let client = JSONLimits(maxBytes: 1 << 20, maxDepth: 64, rejectDuplicateKeys: true)
    public static let worker = JSONLimits(maxBytes: 8 << 20, maxDepth: 128, rejectDuplicateKeys: true)
}

/// Why a document was refused. `description` is safe to show to a client: it names line and column.
public struct JSONError: Error, Sendable, Equatable, CustomStringConvertible {
    public enum Code: String, Sendable {
        case syntax, tooLarge = "too_large", tooDeep = "too_deep", duplicateKey = "duplicate_key"
        case numberOutOfRange = "number_out_of_range", inexactNumber = "inexact_number"
    }
    public var code: Code
    public var message: String
    public var line: Int
    public var column: Int
    public init(code: Code, message: String, line: Int, column: Int) {
        self.code = code
        self.message = message
        self.line = line
        self.column = column
    }
    public var description: String { "\(message) at line \(line), column \(column)" }
}

extension JSONValue {
    /// Parses one JSON text (any value at the top level, not only objects).
    public static func parse(_ bytes: [UInt8], limits: JSONLimits) throws(JSONError) -> JSONValue {
        fatalError("stub")
    }
    public static func parse(_ text: String, limits: JSONLimits) throws(JSONError) -> JSONValue {
        try parse(Array(text.utf8), limits: limits)
    }
    /// Compact encoding (no spaces), numbers in the shortest form that round-trips, keys in stored order.
    public func encoded() -> [UInt8] { fatalError("stub") }
    public func encodedString() -> String { String(decoding: encoded(), as: UTF8.self) }
}
