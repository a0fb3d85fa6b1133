// CONTRACT STUB: the public API the rest of statefn codes against. The HTTP helper replaces these bodies
// (and splits them into one type per file).
import Logging
import StatefnJSON

/// Request headers with case-insensitive lookup. Names are stored lower-cased.
public struct HTTPHeaders: Sendable {
    public private(set) var entries: [(name: String, value: String)]
    public init(_ entries: [(String, String)] = []) {
        self.entries = entries.map { (name: $0.0.lowercased(), value: $0.1) }
    }
    public subscript(name: String) -> String? {
        let lower = name.lowercased()
        return entries.first(where: { $0.name == lower })?.value
    }
}

/// One complete request, body included.
public struct HTTPRequest: Sendable {
    public var method: String
    /// The path as the client sent it, still percent-encoded, without the query string.
    public var path: String
    /// Query parameters, percent-decoded ('+' is a space), in order.
    public var query: [(name: String, value: String)]
    public var headers: HTTPHeaders
    public var body: [UInt8]
    /// The client's X-Request-Id if it sent a sane one (1–128 printable ASCII), else a new random id.
    public var requestID: String
    public init(
        method: String, path: String, query: [(name: String, value: String)] = [], headers: HTTPHeaders = HTTPHeaders(),
        body: [UInt8] = [], requestID: String
    ) {
        self.method = method
        self.path = path
        self.query = query
        self.headers = headers
        self.body = body
        self.requestID = requestID
    }
}

/// A response. The server adds `X-Request-Id` itself.
public struct HTTPResponse: Sendable {
    public var status: Int
    public var headers: [(name: String, value: String)]
    public var body: [UInt8]
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
        let body: JSONValue = [
            "type": .string(type), "title": .string(title ?? HTTPResponse.reasonPhrase(status)),
            "status": .integer(Int64(status)), "detail": .string(detail), "request_id": .string(requestID),
        ]
        return HTTPResponse(
            status: status, headers: [(name: "Content-Type", value: "application/problem+json")] + headers,
            body: body.encoded())
    }
    public static func reasonPhrase(_ status: Int) -> String {
        switch status {
        case 200: "OK"
        case 201: "Created"
        case 204: "No Content"
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

public struct HTTPServerConfiguration: Sendable {
    public var host: String
    /// 0 picks a free port; read it back from `HTTPServer.port`.
    public var port: Int
    /// libmicrohttpd's internal thread pool size.
    public var threads: Int
    /// Larger bodies get 413 (checked against Content-Length first, then while reading).
    public var maxBodyBytes: Int
    public var connectionTimeoutSeconds: Int
    public init(host: String, port: Int, threads: Int = 4, maxBodyBytes: Int = 1 << 20, connectionTimeoutSeconds: Int = 60) {
        self.host = host
        self.port = port
        self.threads = threads
        self.maxBodyBytes = maxBodyBytes
        self.connectionTimeoutSeconds = connectionTimeoutSeconds
    }
}

public struct HTTPServerError: Error, Sendable, CustomStringConvertible {
    public var message: String
    public init(message: String) { self.message = message }
    public var description: String { message }
}

public typealias HTTPHandler = @Sendable (HTTPRequest) async -> HTTPResponse

/// The front door: libmicrohttpd with its own thread pool and epoll. Each complete request is handed to `handler`
/// in a Task while the connection is suspended, and resumed when the answer is ready.
public final class HTTPServer: Sendable {
    public init(configuration: HTTPServerConfiguration, logger: Logger, handler: @escaping HTTPHandler) {
        fatalError("stub")
    }
    /// Binds and starts serving. Throws if the address is taken or invalid.
    public func start() throws(HTTPServerError) { fatalError("stub") }
    /// The bound port (useful with port 0).
    public var port: Int { fatalError("stub") }
    /// Stops accepting new connections; requests in flight go on.
    public func quiesce() {}
    /// Waits up to `gracePeriod` for requests in flight to be answered, then stops the daemon.
    public func stop(gracePeriod: Duration) async {}
}
