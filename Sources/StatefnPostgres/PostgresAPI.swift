// CONTRACT STUB: the public API the rest of statefn codes against. The Postgres helper replaces these bodies
// (and splits them into one type per file).
import Logging

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

/// One result set, as text (libpq's text format). `affectedRows` is PQcmdTuples as a number (0 when empty).
public struct PostgresResult: Sendable {
    public var columns: [String]
    public var rows: [[String?]]
    public var affectedRows: Int
    public init(columns: [String], rows: [[String?]], affectedRows: Int) {
        self.columns = columns
        self.rows = rows
        self.affectedRows = affectedRows
    }
}

/// Connection settings: a `postgres://` / `postgresql://` URL or a libpq key=value string, validated up front.
public struct PostgresConfig: Sendable {
    public var conninfo: String
    public init(_ conninfo: String) throws(PostgresError) {
        self.conninfo = conninfo
        fatalError("stub")
    }
}

/// One libpq connection. Used only inside `PostgresPool.withConnection`, on the pool's dedicated thread, where
/// blocking is allowed. Not Sendable: it never leaves that closure.
public final class PostgresConnection {
    /// Runs one statement with text parameters, as a prepared statement cached per connection by its SQL text.
    public func execute(_ sql: String, _ parameters: [String?] = []) throws(PostgresError) -> PostgresResult {
        fatalError("stub")
    }
    /// Runs a script of several statements with no parameters (migrations).
    public func executeScript(_ sql: String) throws(PostgresError) {
        fatalError("stub")
    }
    init() {}
}

/// A fixed-size pool of connections, each served by its own thread so libpq's blocking calls never run on
/// Swift's cooperative thread pool. Broken connections are replaced on their next use.
public final class PostgresPool: Sendable {
    public init(config: PostgresConfig, size: Int, logger: Logger) {
        fatalError("stub")
    }
    /// Borrows a connection, runs `body` on its thread, and gives the connection back. A transaction opened
    /// in `body` and left open is rolled back before the connection is reused.
    public func withConnection<T: Sendable>(
        _ body: @escaping @Sendable (PostgresConnection) throws -> T
    ) async throws -> T {
        fatalError("stub")
    }
    /// Shorthand for one statement on any connection.
    public func execute(_ sql: String, _ parameters: [String?] = []) async throws -> PostgresResult {
        try await withConnection { try $0.execute(sql, parameters) }
    }
    /// Closes every connection; later calls fail with `.poolClosed`.
    public func close() {}
}

/// A private PostgreSQL cluster started from the installed server binaries (initdb, pg_ctl), listening only on a
/// Unix socket. Used by `statefn serve` without DATABASE_URL, and by the tests. As root it runs the server as an
/// unprivileged user, because PostgreSQL refuses to run as root.
public final class EmbeddedPostgres: Sendable {
    /// `directory` holds the cluster (created on first start, kept across restarts).
    public init(directory: String, logger: Logger) { fatalError("stub") }
    /// Starts the cluster (initdb first if needed) and waits until it accepts connections.
    /// Returns a libpq connection string for it.
    public func start() throws(PostgresError) -> String { fatalError("stub") }
    /// Stops the cluster (fast shutdown) and waits for it to exit.
    public func stop() {}
}
