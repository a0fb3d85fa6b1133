// The log format (DESIGN.md section 7): one JSON object per line, fixed fields first, metadata sorted by key.
import Logging
import StatefnJSON
import Testing

@testable import StatefnCore

@Suite(.timeLimit(.minutes(1))) struct StatefnLogHandlerTests {
    private func line(_ handler: StatefnLogHandler, _ message: String, _ metadata: Logger.Metadata?) -> String {
        let event = LogEvent(
            level: .notice, message: "\(message)", metadata: metadata, source: nil, file: #fileID, function: #function,
            line: #line)
        return String(decoding: handler.line(for: event), as: UTF8.self)
    }

    @Test func fixedFieldsThenSortedMetadataOnOneLine() throws {
        let text = line(StatefnLogHandler(label: "statefn"), "request", ["status": "200", "method": "POST", "b": "x"])
        #expect(text.hasSuffix("}\n"))
        #expect(text.filter { $0 == "\n" }.count == 1)
        let prefix = #"{"time":""#
        #expect(text.hasPrefix(prefix))
        let afterTime = text.drop(while: { $0 != "," })
        #expect(afterTime == #","level":"notice","msg":"request","logger":"statefn","b":"x","method":"POST","status":"200"}"# + "\n")
        let time = try #require(JSONValue.parse(text, limits: .worker)["time"]?.stringValue)
        #expect(time.count == 24 && time.hasSuffix("Z"))
    }

    @Test func escapingNestingAndOverrides() throws {
        var handler = StatefnLogHandler(label: "l")
        handler[metadataKey: "pid"] = "7"
        let text = line(
            handler, "a \"quoted\"\tline\u{1}",
            ["msg": "replaced", "list": ["1", "2"], "map": ["z": "1", "a": ["k": "v"]], "pid": "8"])
        let parsed = try JSONValue.parse(text, limits: .worker)
        #expect(parsed["msg"] == .string("replaced"))
        #expect(parsed["pid"] == .string("8"))
        #expect(parsed["list"] == .array([.string("1"), .string("2")]))
        #expect(parsed["map"]?["a"]?["k"] == .string("v"))
        #expect(text.contains(#""msg":"replaced","logger":"l","list":["1","2"],"map":{"a":{"k":"v"},"z":"1"},"pid":"8"}"#))
        let unescaped = line(StatefnLogHandler(label: "l"), "a \"q\"\t\u{1}", nil)
        #expect(try JSONValue.parse(unescaped, limits: .worker)["msg"] == .string("a \"q\"\t\u{1}"))
    }

    @Test func textLinesForPeople() {
        var handler = StatefnLogHandler(label: "statefn", format: .text)
        handler[metadataKey: "pid"] = "7"
        let text = line(handler, "request", ["status": "200", "path": "/v1/a b", "note": "say \"hi\"\nbye", "e": "\u{202E}x\u{9B}2J"])
        #expect(text.filter { $0 == "\n" }.count == 1)
        let fields = text.split(separator: " ", maxSplits: 2)
        #expect(fields[0].count == 24 && fields[0].hasSuffix("Z"))
        #expect(fields[1] == "notice")
        // Values with spaces, quotes, newlines or format characters are quoted, so one event stays one line.
        #expect(text.hasSuffix(#"request  e="\u202ex\u009b2J"  note="say \"hi\"\nbye"  path="/v1/a b"  pid=7  status=200"# + "\n"))
    }
}
