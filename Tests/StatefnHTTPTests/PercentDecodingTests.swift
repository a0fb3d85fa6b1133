import Testing

// Query decoding and request-id rules, without a server.
@testable import StatefnHTTP

@Suite(.timeLimit(.minutes(1)))
struct PercentDecodingTests {
    @Test(arguments: [
        ("a+b", "a b"), ("%41%62", "Ab"), ("1%2B1", "1+1"), ("100%", "100%"), ("%zz", "%zz"), ("%C3%A9", "é"),
        ("%ff", "\u{FFFD}"), ("plain", "plain"), ("", ""),
    ])
    func queryTextIsDecoded(input: String, expected: String) {
        #expect(input.withCString { percentDecoded($0) } == expected)
    }

    @Test func requestIDRules() {
        #expect(RequestID.isSane("a"))
        #expect(RequestID.isSane(String(repeating: "~", count: 128)))
        #expect(!RequestID.isSane(""))
        #expect(!RequestID.isSane(String(repeating: "a", count: 129)))
        #expect(!RequestID.isSane("a b"))
        #expect(!RequestID.isSane("ü"))
        #expect(RequestID.accept("keep-me") == "keep-me")
        #expect(RequestID.accept(nil).count == 15)
    }
}
