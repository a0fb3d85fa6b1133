// One complete request, as the server hands it to the handler.

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
    /// The peer's IP address, as inet_ntop(3) writes it ("" when unknown, and for requests the gateway makes itself).
    public var clientAddress: String = ""

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

    /// The first value of the query parameter `name`, percent-decoded; nil when absent.
    public func queryValue(_ name: String) -> String? { query.first { $0.name == name }?.value }
}
