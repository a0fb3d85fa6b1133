import Testing

@testable import StatefnWorkers

@Suite(.timeLimit(.minutes(1))) struct LineFramerTests {
    private func feed(_ framer: inout LineFramer, _ text: String) -> [LineFramer.Next] {
        Array(text.utf8).withUnsafeBytes { framer.append($0) }
        var out: [LineFramer.Next] = []
        while case let next = framer.next(), next != .needMore { out.append(next) }
        return out
    }

    @Test func splitsLinesAcrossChunks() {
        var framer = LineFramer(limit: 100)
        #expect(feed(&framer, "{\"a\":") == [])
        #expect(feed(&framer, "1}\n{\"b\"") == [.line(Array("{\"a\":1}".utf8), truncated: false)])
        #expect(feed(&framer, ":2}\n\n") == [.line(Array("{\"b\":2}".utf8), truncated: false), .line([], truncated: false)])
        #expect(framer.remainder() == nil)
    }

    @Test func cutsOverlongLinesAndDropsTheirRest() {
        var framer = LineFramer(limit: 4)
        #expect(feed(&framer, "abcdefgh") == [.line(Array("abcd".utf8), truncated: true)])
        #expect(feed(&framer, "ijk\nok\n") == [.line(Array("ok".utf8), truncated: false)])
        #expect(feed(&framer, "toolong\nx\n") == [.line(Array("tool".utf8), truncated: true), .line(Array("x".utf8), truncated: false)])
        #expect(feed(&framer, "abcd\n") == [.line(Array("abcd".utf8), truncated: false)])
    }

    @Test func remainderIsTheUnterminatedLastLine() {
        var framer = LineFramer(limit: 100)
        #expect(feed(&framer, "one\ntwo") == [.line(Array("one".utf8), truncated: false)])
        #expect(framer.remainder() == Array("two".utf8))
    }

    @Test func manyLinesInOneBigStream() {
        var framer = LineFramer(limit: 1 << 20)
        var count = 0
        for _ in 0..<200 {
            count += feed(&framer, String(repeating: "0123456789abcdef\n", count: 1000)).count
        }
        #expect(count == 200_000)
    }
}
