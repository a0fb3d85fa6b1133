// The JSON value that flows through statefn: client payloads, entity state, worker lines.
// Objects keep their keys in the order they were written, so a function's output comes back as it wrote it.

/// A JSON document. Integers are kept apart from doubles so that 64-bit values survive unchanged (I-JSON, RFC 7493).
///
/// Equal means the same UTF-8 bytes in every string and key, as PostgreSQL and jansson see them, not Swift's
/// canonical equivalence: a state whose "Kate" became "\u{212A}ate" (KELVIN SIGN) has changed (DESIGN.md section 9).
public enum JSONValue: Sendable, Hashable {
    case null
    case bool(Bool)
    case integer(Int64)
    case double(Double)
    case string(String)
    case array([JSONValue])
    case object(JSONObject)

    public static func == (lhs: JSONValue, rhs: JSONValue) -> Bool {
        switch (lhs, rhs) {
        case (.null, .null): true
        case (.bool(let a), .bool(let b)): a == b
        case (.integer(let a), .integer(let b)): a == b
        case (.double(let a), .double(let b)): a == b
        case (.string(let a), .string(let b)): a.utf8.elementsEqual(b.utf8)
        case (.array(let a), .array(let b)): a == b
        case (.object(let a), .object(let b)): a == b
        default: false
        }
    }

    public func hash(into hasher: inout Hasher) {
        switch self {
        case .null: hasher.combine(0 as UInt8)
        case .bool(let value): hasher.combine(value)
        case .integer(let value): hasher.combine(value)
        case .double(let value): hasher.combine(value)
        case .string(let value):
            for byte in value.utf8 { hasher.combine(byte) }
            hasher.combine(0xFF as UInt8)  // not a UTF-8 byte: ends the string
        case .array(let items): hasher.combine(items)
        case .object(let object): hasher.combine(object)
        }
    }
}

/// An ordered JSON object. Lookups are linear, which is faster than hashing for the small objects statefn handles.
public struct JSONObject: Sendable, Hashable, Sequence, ExpressibleByDictionaryLiteral {
    public typealias Element = (key: String, value: JSONValue)
    public private(set) var pairs: [Element]

    public init() { pairs = [] }
    public init(_ pairs: [(String, JSONValue)]) { self.pairs = pairs.map { (key: $0.0, value: $0.1) } }
    public init(dictionaryLiteral elements: (String, JSONValue)...) { self.init(elements) }
    /// For the parser, whose keys are already unique: no per-pair copy or lookup.
    init(orderedPairs pairs: [Element]) { self.pairs = pairs }

    public var count: Int { pairs.count }
    public var isEmpty: Bool { pairs.isEmpty }
    public var keys: [String] { pairs.map(\.key) }
    public func makeIterator() -> IndexingIterator<[Element]> { pairs.makeIterator() }

    /// Reading finds the first pair with `key`; writing replaces it in place or appends, and `nil` removes it.
    public subscript(key: String) -> JSONValue? {
        get { pairs.first(where: { $0.key.utf8.elementsEqual(key.utf8) })?.value }
        set {
            let index = pairs.firstIndex(where: { $0.key.utf8.elementsEqual(key.utf8) })
            switch (index, newValue) {
            case let (i?, v?): pairs[i].value = v
            case let (i?, nil): pairs.remove(at: i)
            case let (nil, v?): pairs.append((key: key, value: v))
            case (nil, nil): break
            }
        }
    }

    public static func == (lhs: JSONObject, rhs: JSONObject) -> Bool {
        lhs.pairs.count == rhs.pairs.count
            && zip(lhs.pairs, rhs.pairs).allSatisfy { $0.key.utf8.elementsEqual($1.key.utf8) && $0.value == $1.value }
    }
    public func hash(into hasher: inout Hasher) {
        hasher.combine(pairs.count)
        for pair in pairs {
            for byte in pair.key.utf8 { hasher.combine(byte) }
            hasher.combine(0xFF as UInt8)  // not a UTF-8 byte: ends the key
            hasher.combine(pair.value)
        }
    }
}

extension JSONValue {
    public subscript(key: String) -> JSONValue? {
        if case .object(let object) = self { return object[key] }
        return nil
    }
    public var isNull: Bool { if case .null = self { return true } else { return false } }
    public var stringValue: String? { if case .string(let s) = self { return s } else { return nil } }
    public var boolValue: Bool? { if case .bool(let b) = self { return b } else { return nil } }
    public var integerValue: Int64? { if case .integer(let i) = self { return i } else { return nil } }
    public var objectValue: JSONObject? { if case .object(let o) = self { return o } else { return nil } }
    public var arrayValue: [JSONValue]? { if case .array(let a) = self { return a } else { return nil } }
    /// A number as a Double, whether it was written as an integer or not.
    public var doubleValue: Double? {
        switch self {
        case .integer(let i): return Double(i)
        case .double(let d): return d
        default: return nil
        }
    }
}

extension JSONValue: ExpressibleByStringLiteral, ExpressibleByIntegerLiteral, ExpressibleByBooleanLiteral,
    ExpressibleByNilLiteral, ExpressibleByArrayLiteral, ExpressibleByDictionaryLiteral, ExpressibleByFloatLiteral
{
    public init(stringLiteral value: String) { self = .string(value) }
    public init(integerLiteral value: Int64) { self = .integer(value) }
    public init(floatLiteral value: Double) { self = .double(value) }
    public init(booleanLiteral value: Bool) { self = .bool(value) }
    public init(nilLiteral: ()) { self = .null }
    public init(arrayLiteral elements: JSONValue...) { self = .array(elements) }
    public init(dictionaryLiteral elements: (String, JSONValue)...) { self = .object(JSONObject(elements)) }
}
