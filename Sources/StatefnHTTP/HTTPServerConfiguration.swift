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
    public var connectionTimeoutSeconds: Int

    public init(
        host: String, port: Int, threads: Int = 4, maxBodyBytes: Int = 1 << 20, connectionTimeoutSeconds: Int = 60
    ) {
        self.host = host
        self.port = port
        self.threads = threads
        self.maxBodyBytes = maxBodyBytes
        self.connectionTimeoutSeconds = connectionTimeoutSeconds
    }
}
