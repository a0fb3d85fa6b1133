// A handler's answer, and the RFC 9457 problem bodies every layer of statefn answers errors with.
import StatefnJSON
import StatefnText

/// A response. The server adds `X-Request-Id` itself; `Content-Length` is always computed from `body`.
public struct HTTPResponse: Sendable {
    public var status: Int
    public var headers: [(name: String, value: String)]
    public var body: [UInt8]
    /// Runs once the response has been handed to the connection, off the client's critical path: for access logs.
    public var afterSending: (@Sendable () -> Void)?
    /// A body written while it is sent (chunked, no Content-Length); `body` is then ignored.
    public var stream: HTTPStream?

    public init(status: Int, headers: [(name: String, value: String)] = [], body: [UInt8] = []) {
        self.status = status
        self.headers = headers
        self.body = body
    }

    /// A JSON body with `Content-Type: application/json`.
    public static func json(_ value: JSONValue, status: Int = 200, headers: [(name: String, value: String)] = [])
        -> HTTPResponse
    {
        HTTPResponse(
            status: status, headers: [(name: "Content-Type", value: "application/json")] + headers,
            body: value.encoded())
    }

    /// An RFC 9457 problem: `{"type","title","status","detail","request_id"}` as application/problem+json.
    /// `title` defaults to the status's reason phrase; `type` to "about:blank".
    public static func problem(
        status: Int, detail: String, requestID: String, title: String? = nil, type: String = "about:blank",
        headers: [(name: String, value: String)] = []
    ) -> HTTPResponse {
        // Written by hand rather than through JSONValue: the shape is fixed, and the server's own 413 and 503
        // answers then never depend on the JSON module.
        var body: [UInt8] = []
        body.reserveCapacity(96 + detail.utf8.count)
        body.append(contentsOf: #"{"type":"#.utf8)
        appendJSONString(type, to: &body)
        body.append(contentsOf: #","title":"#.utf8)
        appendJSONString(title ?? reasonPhrase(status), to: &body)
        body.append(contentsOf: #","status":\#(status),"detail":"#.utf8)
        appendJSONString(detail, to: &body)
        body.append(contentsOf: #","request_id":"#.utf8)
        appendJSONString(requestID, to: &body)
        body.append(UInt8(ascii: "}"))
        return HTTPResponse(
            status: status, headers: [(name: "Content-Type", value: "application/problem+json")] + headers,
            body: body)
    }

    public static func reasonPhrase(_ status: Int) -> String {
        switch status {
        case 200: "OK"
        case 201: "Created"
        case 204: "No Content"
        case 304: "Not Modified"
        case 400: "Bad Request"
        case 401: "Unauthorized"
        case 403: "Forbidden"
        case 404: "Not Found"
        case 405: "Method Not Allowed"
        case 409: "Conflict"
        case 412: "Precondition Failed"
        case 413: "Content Too Large"
        case 415: "Unsupported Media Type"
        case 422: "Unprocessable Content"
        case 429: "Too Many Requests"
        case 500: "Internal Server Error"
        case 502: "Bad Gateway"
        case 503: "Service Unavailable"
        case 504: "Gateway Timeout"
        default: "HTTP \(status)"
        }
    }
}

/// Appends `text` as a quoted JSON string (RFC 8259 escaping; non-ASCII stays UTF-8).
private func appendJSONString(_ text: String, to out: inout [UInt8]) {
    let hex = Hex.digits
    out.append(UInt8(ascii: "\""))
    for byte in text.utf8 {
        switch byte {
        case UInt8(ascii: "\""), UInt8(ascii: "\\"): out += [UInt8(ascii: "\\"), byte]
        case UInt8(ascii: "\n"): out += [UInt8(ascii: "\\"), UInt8(ascii: "n")]
        case UInt8(ascii: "\r"): out += [UInt8(ascii: "\\"), UInt8(ascii: "r")]
        case UInt8(ascii: "\t"): out += [UInt8(ascii: "\\"), UInt8(ascii: "t")]
        case 0..<0x20: out += Array(#"\u00"#.utf8) + [hex[Int(byte >> 4)], hex[Int(byte & 0xF)]]
        default: out.append(byte)
        }
    }
    out.append(UInt8(ascii: "\""))
}
