// Turns jansson's json_error_t into a JSONError with a message fit for a client.
import CJansson

extension JSONError {
    init(jansson error: json_error_t, input: UnsafeBufferPointer<UInt8>) {
        var error = error
        let code = Int(cjansson_error_code(&error))
        let text = withUnsafeBytes(of: &error.text) { bytes in
            String(decoding: bytes.prefix(while: { $0 != 0 }), as: UTF8.self)
        }
        let line = Int(error.line)
        let column = max(Int(error.column), 1)
        switch code {
        case Int(json_error_numeric_overflow.rawValue):
            if let literal = NumberToken(endingAt: Int(error.position), in: input) {
                self = literal.overflowError(in: input)
                return
            }
            self.init(code: .numberOutOfRange, message: Self.clientSafe(text), line: line, column: column)
        case Int(json_error_duplicate_key.rawValue):
            self.init(code: .duplicateKey, message: Self.clientSafe(text), line: line, column: column)
        case Int(json_error_stack_overflow.rawValue):
            self.init(code: .tooDeep, message: "nesting is too deep", line: line, column: column)
        case Int(json_error_null_character.rawValue):
            // jansson's own text names one of its flags, which means nothing to a client.
            self.init(code: .syntax, message: "\\u0000 is not allowed in strings", line: line, column: column)
        case _ where input.allSatisfy(Self.isWhitespace):
            self.init(code: .syntax, message: "JSON text is empty", line: line, column: column)
        default:
            self.init(code: .syntax, message: Self.clientSafe(text), line: line, column: column)
        }
    }

    private static func isWhitespace(_ byte: UInt8) -> Bool {
        byte == 0x20 || byte == 0x0A || byte == 0x0D || byte == 0x09
    }

    /// jansson quotes up to 20 bytes of the input near the error; control characters there must not reach a log line
    /// or a terminal raw.
    private static func clientSafe(_ text: String) -> String {
        String(String.UnicodeScalarView(text.unicodeScalars.map { $0.value < 0x20 || $0.value == 0x7F ? "?" : $0 }))
    }
}

/// A number token of the input, found again after jansson refused it, to say which literal was at fault.
private struct NumberToken {
    var start: Int
    var end: Int

    /// jansson's error position is the offset just past the offending token.
    init?(endingAt position: Int, in input: UnsafeBufferPointer<UInt8>) {
        end = min(max(position, 0), input.count)
        start = end
        while start > 0, Self.isNumberByte(input[start - 1]) { start -= 1 }
        if start == end { return nil }
    }

    private static func isNumberByte(_ byte: UInt8) -> Bool {
        switch byte {
        case UInt8(ascii: "0")...UInt8(ascii: "9"), UInt8(ascii: "-"), UInt8(ascii: "+"), UInt8(ascii: "."),
            UInt8(ascii: "e"), UInt8(ascii: "E"):
            return true
        default: return false
        }
    }

    func overflowError(in input: UnsafeBufferPointer<UInt8>) -> JSONError {
        let token = input[start..<end]
        let text = quoted(token)
        let isInteger = !token.contains { $0 == UInt8(ascii: ".") || $0 | 0x20 == UInt8(ascii: "e") }
        let message =
            isInteger
            ? "integer \(text) is outside the 64-bit range (I-JSON allows 64-bit integers; send larger ones as strings)"
            : "number \(text) is too large for a 64-bit double"
        return JSONError(.numberOutOfRange, message, in: input, at: start)
    }
}
