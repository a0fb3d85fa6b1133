// What one statement returned, copied out of libpq's PGresult so no C memory outlives the call.

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
