// What the front door listens on and the limits it enforces before a handler sees a request.

public struct HTTPServerConfiguration: Sendable {
    /// An IPv4 or IPv6 literal (brackets allowed), or "localhost".
    public var host: String
    /// 0 picks a free port; read it back from `HTTPServer.port`.
    public var port: Int
    /// libmicrohttpd's internal thread pool size.
    public var threads: Int
    /// Larger bodies get 413 (checked against Content-Length first, then while reading).
    public var maxBodyBytes: Int
    /// An idle connection is closed after this long (libmicrohttpd's timeout).
    public var connectionTimeoutSeconds: Int
    /// A request head (request line and headers) must arrive whole within this long of the connection opening or
    /// of the previous request ending, however slowly its bytes trickle in; 0 turns it off.
    public var headerTimeoutSeconds: Int
    /// At most this many connections from one client address at a time; 0 for no limit (behind a proxy, every
    /// connection comes from the proxy's address).
    public var maxConnectionsPerAddress: Int
    /// A request with more query parameters gets 400.
    public var maxQueryParameters = 100

    public init(
        host: String, port: Int, threads: Int = 4, maxBodyBytes: Int = 1 << 20, connectionTimeoutSeconds: Int = 60,
        headerTimeoutSeconds: Int = 30, maxConnectionsPerAddress: Int = 256
    ) {
        self.host = host
        self.port = port
        self.threads = threads
        self.maxBodyBytes = maxBodyBytes
        self.connectionTimeoutSeconds = connectionTimeoutSeconds
        self.headerTimeoutSeconds = headerTimeoutSeconds
        self.maxConnectionsPerAddress = maxConnectionsPerAddress
    }

    /// How much of a body over the limit is read and dropped so that a client still sending it (one that sent no
    /// `Expect: 100-continue`) reads its 413, rather than a reset from a socket closed under its send: the first
    /// 16 MiB, or four times the limit if that is more. A longer body is cut off.
    public var discardBytes: Int { max(4 * maxBodyBytes, 16 << 20) }
}
