// Parsing: jansson reads and validates the text, statefn's own scan adds the depth and number rules,
// and the jansson tree is then copied into a JSONValue and freed.
import CJansson

extension JSONValue {
    /// Parses one JSON text (any value at the top level, not only objects).
    public static func parse(_ bytes: [UInt8], limits: JSONLimits) throws(JSONError) -> JSONValue {
        try bytes.withUnsafeBufferPointer { input throws(JSONError) in try parse(input, limits: limits) }
    }

    public static func parse(_ text: String, limits: JSONLimits) throws(JSONError) -> JSONValue {
        var text = text
        return try text.withUTF8 { input in Result { () throws(JSONError) in try parse(input, limits: limits) } }.get()
    }

    /// Parses the bytes in place, without copying them first. Wraps `json_loadb`.
    public static func parse(_ input: UnsafeBufferPointer<UInt8>, limits: JSONLimits) throws(JSONError) -> JSONValue {
        if input.count > limits.maxBytes {
            throw JSONError(.tooLarge, "JSON text is larger than \(limits.maxBytes) bytes", in: input, at: limits.maxBytes)
        }
        guard let start = input.baseAddress, !input.isEmpty else {
            throw JSONError(code: .syntax, message: "JSON text is empty", line: 1, column: 1)
        }
        var flags = JSON_DECODE_ANY
        if limits.rejectDuplicateKeys { flags |= JSON_REJECT_DUPLICATES }
        var error = json_error_t()
        let root = start.withMemoryRebound(to: CChar.self, capacity: input.count) {
            json_loadb($0, input.count, Int(flags), &error)
        }
        guard let root else { throw JSONError(jansson: error, input: input) }
        defer { json_decref(root) }
        try JSONTextScan.check(input, maxDepth: limits.maxDepth)
        return JSONValue(jansson: root)
    }

    /// Copies a jansson tree. The scan has already bounded its depth, so the recursion is bounded too.
    private init(jansson json: UnsafeMutablePointer<json_t>) {
        switch cjansson_typeof(json) {
        case JSON_OBJECT:
            var pairs: [JSONObject.Element] = []
            pairs.reserveCapacity(json_object_size(json))
            var iterator = json_object_iter(json)
            while let current = iterator {
                let key = UnsafeRawBufferPointer(start: json_object_iter_key(current), count: json_object_iter_key_len(current))
                pairs.append((key: String(decoding: key, as: UTF8.self), value: JSONValue(jansson: json_object_iter_value(current))))
                iterator = json_object_iter_next(json, current)
            }
            self = .object(JSONObject(orderedPairs: pairs))
        case JSON_ARRAY:
            let count = json_array_size(json)
            var elements: [JSONValue] = []
            elements.reserveCapacity(count)
            for index in 0..<count { elements.append(JSONValue(jansson: json_array_get(json, index))) }
            self = .array(elements)
        case JSON_STRING:
            let utf8 = UnsafeRawBufferPointer(start: json_string_value(json), count: json_string_length(json))
            self = .string(String(decoding: utf8, as: UTF8.self))
        case JSON_INTEGER: self = .integer(json_integer_value(json))
        case JSON_REAL: self = .double(json_real_value(json))
        case JSON_TRUE: self = .bool(true)
        case JSON_FALSE: self = .bool(false)
        default: self = .null
        }
    }
}
