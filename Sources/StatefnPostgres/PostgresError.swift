// The one error type of StatefnPostgres: a stable code, SQLSTATE when the server sent one, and detail for logs only.

/// A failure from the database, carrying SQLSTATE when the server sent one. `description` never includes SQL,
/// server messages or credentials, so it is safe for clients; `logDescription` has the full detail for logs.
public struct PostgresError: Error, Sendable, CustomStringConvertible {
    public enum Code: String, Sendable {
        case connectionFailed = "connection_failed"  // cannot connect, or the connection broke
        case queryFailed = "query_failed"  // the server answered with an error (see sqlState)
        case invalidConfiguration = "invalid_configuration"
        case poolClosed = "pool_closed"
        case poolTimeout = "pool_timeout"  // no connection became free in time
    }
    public var code: Code
    public var sqlState: String?
    /// Server message and context; for logs only.
    public var detail: String
    public init(code: Code, sqlState: String? = nil, detail: String) {
        self.code = code
        self.sqlState = sqlState
        self.detail = detail
    }
    public var description: String { "database error (\(code.rawValue)\(sqlState.map { ", SQLSTATE \($0)" } ?? ""))" }
    public var logDescription: String { "\(description): \(detail)" }
    /// 40001 serialization failure or 40P01 deadlock: safe to retry the whole transaction.
    public var isRetryableTransactionFailure: Bool { sqlState == "40001" || sqlState == "40P01" }
    /// 40003 (CockroachDB): the commit's outcome is unknown. Never retried blindly.
    public var isUnknownCommitOutcome: Bool { sqlState == "40003" }
}
