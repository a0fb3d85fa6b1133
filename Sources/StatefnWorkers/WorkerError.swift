// The one error type of StatefnWorkers. Its code maps to an HTTP status in StatefnCore; its detail is for logs only.

/// Why a worker call failed. `description` is safe for clients; `detail` (exit status, stderr excerpt) is for logs.
public struct WorkerError: Error, Sendable, CustomStringConvertible {
    public enum Code: String, Sendable {
        case invalidManifest = "invalid_manifest"
        case spawnFailed = "spawn_failed"  // 502
        case crashed  // the worker exited or closed stdout without answering: 502
        case invalidResponse = "invalid_response"  // not JSON, not an object, too long: 502
        case protocolViolation = "protocol_violation"  // wrong id, etc.: 502
        case timedOut = "timed_out"  // 504; the process group was killed
        case queueFull = "queue_full"  // 429
        case shuttingDown = "shutting_down"  // 503
        case unhealthy  // a crash loop: 503 with Retry-After until the files change or the cool-down ends
        case removed  // the function left the functions directory while the request was on its way: 404
    }
    public var code: Code
    public var detail: String
    /// When to try again, for `queueFull` and `unhealthy`.
    public var retryAfterSeconds: Int?
    public init(code: Code, detail: String, retryAfterSeconds: Int? = nil) {
        self.code = code
        self.detail = detail
        self.retryAfterSeconds = retryAfterSeconds
    }
    init(_ code: Code, _ detail: String, retryAfterSeconds: Int? = nil) {
        self.init(code: code, detail: detail, retryAfterSeconds: retryAfterSeconds)
    }
    public var description: String { "worker error (\(code.rawValue))" }
}
