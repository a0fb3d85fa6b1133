// A server-sent events client for the tests: one GET with `Accept: text/event-stream` on its own connection, its
// chunked body parsed into frames (`id:`, `event:`, `data:`; comment lines skipped) as a browser's EventSource does.
import Foundation

public struct TestEvent: Sendable, Equatable {
    public var id: String?
    public var event: String
    public var data: String
}

public final class TestEventStream {
    public let response: TestHTTPResponse
    private let connection: TestHTTPConnection
    private var text = ""
    public private(set) var ended = false

    /// Opens the stream; `timeout` bounds each wait for bytes, so a frame that never comes is `.timedOut`.
    public init(port: Int, path: String, headers: [(name: String, value: String)] = [], timeout: Double = 5)
        throws(TestHTTPError)
    {
        connection = try TestHTTPConnection(port: port, timeout: timeout)
        try connection.sendRequest("GET", path, headers: [(name: "Accept", value: "text/event-stream")] + headers)
        response = try connection.readResponseHead().response
    }

    /// The next event; nil once the server ended the stream.
    public func next() throws(TestHTTPError) -> TestEvent? {
        while true {
            if let end = text.range(of: "\n\n") {
                let block = text[..<end.lowerBound]
                text.removeSubrange(..<end.upperBound)
                var event = TestEvent(id: nil, event: "message", data: "")
                var hasData = false
                for line in block.split(separator: "\n", omittingEmptySubsequences: false) {
                    if line.hasPrefix(":") { continue }
                    let (field, value) = line.firstIndex(of: ":").map {
                        (String(line[..<$0]), String(line[line.index(after: $0)...]).drop(while: { $0 == " " }))
                    } ?? (String(line), "")
                    switch field {
                    case "id": event.id = String(value)
                    case "event": event.event = String(value)
                    case "data":
                        event.data += (hasData ? "\n" : "") + value
                        hasData = true
                    default: break
                    }
                }
                if hasData { return event }
                continue
            }
            guard !ended, let chunk = try connection.readChunk() else {
                ended = true
                return nil
            }
            text += String(decoding: chunk, as: UTF8.self)
        }
    }

    public func close() { connection.close() }
}
