// Parse → encode round trips: values, key order, numbers and string escaping as a client would see them.
import StatefnJSON
import Testing

private let open = JSONLimits(maxBytes: 1 << 20, maxDepth: 64, rejectDuplicateKeys: true)

private func roundTrip(_ text: String) throws -> String {
    try JSONValue.parse(text, limits: open).encodedString()
}

@Suite(.timeLimit(.minutes(1))) struct JSONRoundTripTests {
    @Test(arguments: [
        "null", "true", "false", "0", "-1", "42", "\"\"", "\"hello\"", "[]", "{}", "[1,2,3]", "[[],[[]],{}]",
        #"{"a":1,"b":[true,false,null],"c":{"d":"e"}}"#, "99.99", "0.1", "1.5", "-2.25", "1e+300", "-0.0",
        "9007199254740993", "9223372036854775807", "-9223372036854775808", "0.30000000000000004", "1.0",
    ])
    func compactTextSurvivesUnchanged(_ text: String) throws {
        #expect(try roundTrip(text) == text)
    }

    @Test func whitespaceIsDropped() throws {
        #expect(try roundTrip(" {\n\t\"a\" : [ 1 , 2 ] ,\r\n \"b\" : { } } ") == #"{"a":[1,2],"b":{}}"#)
    }

    @Test func topLevelScalarsParse() throws {
        #expect(try JSONValue.parse("17", limits: open) == .integer(17))
        #expect(try JSONValue.parse(" \"x\" ", limits: open) == .string("x"))
        #expect(try JSONValue.parse("null", limits: open) == .null)
        #expect(try JSONValue.parse("2.5", limits: open) == .double(2.5))
        #expect(try JSONValue.parse("false", limits: open) == .bool(false))
    }

    @Test func integersAndRealsStayApart() throws {
        #expect(try JSONValue.parse("[1, 1.0, 1e2, -0]", limits: open) == [1, .double(1), .double(100), 0])
        #expect(try roundTrip("[1,1.0,1e2,1E5]") == "[1,1.0,100.0,100000.0]")
    }

    @Test func faithfulNumbers() throws {
        #expect(try JSONValue.parse("99.99", limits: open) == .double(99.99))
        #expect(try JSONValue.parse("9007199254740993", limits: open) == .integer(9_007_199_254_740_993))
        #expect(try JSONValue.parse("9223372036854775807", limits: open) == .integer(.max))
        #expect(try JSONValue.parse("-9223372036854775808", limits: open) == .integer(.min))
        #expect(try roundTrip("1e300") == "1e+300")
        #expect(try roundTrip("1.5e300") == "1.5e+300")
        #expect(try roundTrip("123456.789e3") == "123456789.0")
        #expect(try roundTrip("1e-7") == "1e-07")
        let negativeZero = try JSONValue.parse("-0.0", limits: open)
        #expect(negativeZero.doubleValue?.sign == .minus)
    }

    @Test(arguments: [
        99.99, 0.1, 1e300, -1e-300, .leastNonzeroMagnitude, 1.7976931348623157e308, 1e16, 123456789.125, 0.1 + 0.2,
        -0.0, 1.0 / 3.0,
    ])
    func encodedDoublesReadBackExactly(_ value: Double) throws {
        let text = JSONValue.double(value).encodedString()
        let back = try JSONValue.parse(text, limits: open)
        #expect(back.doubleValue?.bitPattern == value.bitPattern, "\(text)")
    }

    @Test func nonFiniteDoublesEncodeAsNull() {
        #expect(
            JSONValue.array([.double(.infinity), .double(-.infinity), .double(.nan)]).encodedString()
                == "[null,null,null]")
    }

    @Test func integersEncodeAsTheirDecimalText() {
        let values: [Int64] = [0, 7, -7, 10, 1_000_000, 9_007_199_254_740_993, .max, .min, .min + 1]
        for value in values {
            #expect(JSONValue.integer(value).encodedString() == String(value))
        }
    }

    @Test func keyOrderIsKeptThroughParseAndEncode() throws {
        let text = #"{"zebra":1,"apple":2,"mango":{"y":1,"b":2,"x":3},"kiwi":4}"#
        let value = try JSONValue.parse(text, limits: open)
        #expect(value.objectValue?.keys == ["zebra", "apple", "mango", "kiwi"])
        #expect(value.encodedString() == text)
        // Enough keys for jansson's hash table to grow several times.
        let keys = (0..<200).map { "k\((($0 * 7919) % 1000))" }
        let big = "{" + keys.enumerated().map { "\"\($1)\":\($0)" }.joined(separator: ",") + "}"
        #expect(try JSONValue.parse(big, limits: open).objectValue?.keys == keys)
        #expect(try roundTrip(big) == big)
    }

    @Test func stringEscaping() throws {
        let value = JSONValue.string("q\"b\\s/\u{08}\u{0C}\n\r\t\u{01}\u{1F}\u{7F}é€😀")
        let text = value.encodedString()
        #expect(text == "\"q\\\"b\\\\s/\\b\\f\\n\\r\\t\\u0001\\u001f\u{7F}é€😀\"")
        #expect(try JSONValue.parse(text, limits: open) == value)
    }

    @Test func escapedInputIsDecoded() throws {
        let value = try JSONValue.parse(#"["\u00e9\u20ac\ud83d\ude00", "\/\"\\\n", "\u001F"]"#, limits: open)
        #expect(value == ["é€😀", "/\"\\\n", "\u{1F}"])
        #expect(value.encodedString() == #"["é€😀","/\"\\\n","\u001f"]"#)
    }

    @Test func keysAreEscapedToo() throws {
        let value: JSONValue = ["a\"b": 1, "ключ\n": "значение"]
        #expect(value.encodedString() == #"{"a\"b":1,"ключ\n":"значение"}"#)
        #expect(try JSONValue.parse(value.encodedString(), limits: open) == value)
    }

    @Test func encodeIntoAppends() {
        var out = Array("x".utf8)
        JSONValue.array([1, "a"]).encode(into: &out)
        JSONValue.null.encode(into: &out)
        #expect(String(decoding: out, as: UTF8.self) == #"x[1,"a"]null"#)
    }

    @Test func builtValuesRoundTrip() throws {
        let value: JSONValue = [
            "cart": ["items": [["sku": "A-1", "qty": 2, "price": 19.99]], "total": 39.98],
            "owner": nil, "open": true, "version": .integer(.max), "tags": [],
        ]
        #expect(try JSONValue.parse(value.encoded(), limits: open) == value)
    }
}
