// What the parser refuses, with which code, and where: these messages reach clients as 400 details.
import StatefnJSON
import Testing

private let open = JSONLimits(maxBytes: 1 << 20, maxDepth: 64, rejectDuplicateKeys: true)

private func refusal(_ text: String, limits: JSONLimits = open) -> JSONError? {
    refusal(Array(text.utf8), limits: limits)
}

private func refusal(_ bytes: [UInt8], limits: JSONLimits = open) -> JSONError? {
    do {
        _ = try JSONValue.parse(bytes, limits: limits)
        return nil
    } catch {
        return error
    }
}

@Suite(.timeLimit(.minutes(1))) struct JSONRefusalTests {
    @Test func brokenJSONNamesLineAndColumn() throws {
        let error = try #require(refusal("{\"a\":1,\n \"b\":}"))
        #expect(error.code == .syntax)
        #expect(error.line == 2)
        #expect(error.column == 6)
        #expect(error.description == "unexpected token near '}' at line 2, column 6")
    }

    @Test(arguments: ["", "   ", "\n\t "])
    func emptyInputIsRefused(_ text: String) throws {
        let error = try #require(refusal(text))
        #expect(error.code == .syntax)
        #expect(error.message == "JSON text is empty")
        #expect(error.column >= 1)
    }

    @Test(arguments: ["1 2", "{} x", "[1]]", "\"a\"\"b\"", "nulll", "{\"a\":1}}"])
    func trailingGarbageIsRefused(_ text: String) throws {
        #expect(try #require(refusal(text)).code == .syntax)
    }

    @Test(arguments: [
        "[1,]", "{\"a\"}", "{a:1}", "'a'", "01", "1.", ".5", "+1", "NaN", "Infinity", "[", "\"abc", "tru",
    ])
    func invalidSyntaxIsRefused(_ text: String) throws {
        #expect(try #require(refusal(text)).code == .syntax)
    }

    @Test func controlCharactersAndNulInStringsAreRefused() throws {
        let control = try #require(refusal("\"a\u{01}b\""))
        #expect(control.code == .syntax)
        #expect(!control.message.unicodeScalars.contains { $0.value < 0x20 })
        let nul = try #require(refusal(#"{"a":"x\u0000y"}"#))
        #expect(nul.code == .syntax)
        #expect(nul.message == "\\u0000 is not allowed in strings")
    }

    @Test func invalidUTF8IsRefused() throws {
        let error = try #require(refusal([0x22, 0xFF, 0x22]))
        #expect(error.code == .syntax)
        #expect(error.message == "unable to decode byte 0xff near '\"'")
    }

    @Test func integerBeyond64BitsIsOutOfRange() throws {
        let error = try #require(refusal("{\"id\":\n  123456789012345678901234}"))
        #expect(error.code == .numberOutOfRange)
        #expect(error.message.contains("integer 123456789012345678901234 is outside the 64-bit range"))
        #expect(error.message.contains("I-JSON"))
        #expect(error.line == 2)
        #expect(error.column == 3)
        #expect(try #require(refusal("9223372036854775808")).code == .numberOutOfRange)
        #expect(try #require(refusal("-9223372036854775809")).code == .numberOutOfRange)
    }

    @Test func hugeLiteralsAreShortenedInMessages() throws {
        let error = try #require(refusal(String(repeating: "9", count: 5000)))
        #expect(error.code == .numberOutOfRange)
        #expect(error.message.count < 200)
        #expect(error.message.contains("5000 characters"))
    }

    @Test func realOverflowIsOutOfRange() throws {
        let error = try #require(refusal("[1, 1e400]"))
        #expect(error.code == .numberOutOfRange)
        #expect(error.message == "number 1e400 is too large for a 64-bit double")
        #expect(error.column == 5)
        #expect(try #require(refusal("-1.5e99999999999999999999")).code == .numberOutOfRange)
    }

    @Test(arguments: [
        "9007199254740993.0", "1.00000000000000001", "0.12345678901234567890", "123456789012345678e3",
        "[1, {\"a\": 3.14159265358979323846}]", "1e-400", "-4.9406564584124654e-324",
        "0.1000000000000000055511151231257827",
    ])
    func inexactRealsAreRefused(_ text: String) throws {
        let error = try #require(refusal(text))
        #expect(error.code == .inexactNumber)
        #expect(error.message.contains("cannot be represented exactly"))
    }

    @Test func inexactRealNamesTheLiteralAndItsPlace() throws {
        let error = try #require(refusal("{\"a\": 1,\n \"pi\": 3.14159265358979323846}"))
        #expect(
            error.message
                == "number 3.14159265358979323846 cannot be represented exactly (more than 15 significant digits)")
        #expect(error.line == 2)
        #expect(error.column == 8)
    }

    @Test(arguments: [
        "0.30000000000000004", "123456789012345.6", "1.7976931348623157e308", "2.2250738585072014e-308", "5e-324",
        "1.2345e-310", "1.00000000000000000000",
        "0.000000000000000000000000", "0e-999", "100000000000000000000000000000.0", "1234567890.12345",
    ])
    func exactRealsAreKept(_ text: String) throws {
        let value = try JSONValue.parse(text, limits: open)
        #expect(value.doubleValue == Double(text))
    }

    @Test func duplicateKeysAreRefusedWithTheirPlace() throws {
        let error = try #require(refusal("{\"a\": 1,\n \"b\": {\"c\": 1, \"c\": 2}}"))
        #expect(error.code == .duplicateKey)
        #expect(error.message.contains("duplicate"))
        #expect(error.line == 2)
        #expect(error.column == 18)  // jansson points at the end of the repeated key
    }

    @Test func duplicateKeysAreAllowedWhenTheLimitsSaySo() throws {
        let lenient = JSONLimits(maxBytes: 1024, rejectDuplicateKeys: false)
        let value = try JSONValue.parse(#"{"a":1,"b":2,"a":3}"#, limits: lenient)
        #expect(value.encodedString() == #"{"a":3,"b":2}"#)
    }

    @Test func sizeLimitRefusesBeforeParsing() throws {
        let limits = JSONLimits(maxBytes: 10)
        #expect(try JSONValue.parse("[1,2,3,45]", limits: limits) == [1, 2, 3, 45])
        // Not valid JSON either: the size is checked first.
        let error = try #require(refusal("[1,2,\n3,456,", limits: limits))
        #expect(error.code == .tooLarge)
        #expect(error.message == "JSON text is larger than 10 bytes")
        #expect(error.line == 2)
        #expect(error.column == 5)
    }

    @Test func depthLimit() throws {
        let limits = JSONLimits(maxBytes: 1 << 20, maxDepth: 3)
        #expect(try JSONValue.parse("[{\"a\":[1]}]", limits: limits) == [["a": [1]]])
        #expect(try JSONValue.parse(#"["[[[[", {"{{{": "]]]"}]"#, limits: limits).arrayValue?.count == 2)
        let error = try #require(refusal("[{\"a\":\n[[1]]}]", limits: limits))
        #expect(error.code == .tooDeep)
        #expect(error.message == "nesting is deeper than 3 levels")
        #expect(error.line == 2)
        #expect(error.column == 2)
        #expect(
            try #require(refusal(String(repeating: "[", count: 65) + String(repeating: "]", count: 65))).code
                == .tooDeep)
        let deepest = String(repeating: "[", count: 64) + String(repeating: "]", count: 64)
        #expect(try JSONValue.parse(deepest, limits: open).encodedString() == deepest)
    }

    @Test func depthBeyondJanssonsOwnLimitIsTooDeep() throws {
        let limits = JSONLimits(maxBytes: 1 << 20, maxDepth: 5000)
        let error = try #require(
            refusal(String(repeating: "[", count: 3000) + String(repeating: "]", count: 3000), limits: limits))
        #expect(error.code == .tooDeep)
    }

    @Test func errorCodesAreStable() {
        let codes: [JSONError.Code] = [.syntax, .tooLarge, .tooDeep, .duplicateKey, .numberOutOfRange, .inexactNumber]
        #expect(
            codes.map(\.rawValue) == [
                "syntax", "too_large", "too_deep", "duplicate_key", "number_out_of_range", "inexact_number",
            ])
    }
}
