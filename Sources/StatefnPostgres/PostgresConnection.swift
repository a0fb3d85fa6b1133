// One libpq connection: prepared statements cached by SQL text, results copied out as text, errors mapped to
// SQLSTATE. It makes blocking libpq calls, so only a pool slot's serial queue ever touches it.
import CLibPQ
import Foundation
import StatefnText

/// One libpq connection. Used only inside `PostgresPool.withConnection`, on the pool's dedicated thread, where
/// blocking is allowed. Not Sendable: it never leaves that closure.
public final class PostgresConnection {
    /// The PGconn; this object is its only owner and PQfinishes it in `close()`.
    private var handle: OpaquePointer?
    /// SQL text to the name it was prepared under on this server session. A new session starts empty.
    private var statementNames: [String: String] = [:]
    private var statementCount = 0
    /// Past this many distinct statements, the cache is dropped: SQL built from data should not grow it forever.
    private static let statementCacheLimit = 1000

    /// Connects, blocking for at most libpq's connect_timeout. PQconnectdbParams.
    init(config: PostgresConfig) throws(PostgresError) {
        guard let connection = config.withConnectParameters({ PQconnectdbParams($0, $1, 1) }) else {
            throw PostgresError(code: .connectionFailed, detail: "libpq could not allocate a connection")
        }
        guard PQstatus(connection) == CONNECTION_OK else {
            let message = Self.message(of: connection)
            PQfinish(connection)
            throw PostgresError(code: .connectionFailed, detail: message)
        }
        // The server's NOTICEs ("relation already exists, skipping") would go to stderr, into logs and CLI output:
        // they say nothing a user acts on. A WARNING still goes to stderr. PQsetNoticeProcessor.
        PQsetNoticeProcessor(
            connection,
            { _, message in
                guard let message, strncmp(message, "WARNING", 7) == 0 else { return }
                _ = write(2, message, strlen(message))
            }, nil)
        handle = connection
    }

    deinit { close() }

    /// Runs one statement with text parameters, as a prepared statement cached per connection by its SQL text.
    public func execute(_ sql: String, _ parameters: [String?] = []) throws(PostgresError) -> PostgresResult {
        let connection = try usableHandle()
        let name = try preparedStatement(for: sql, on: connection)
        for case (let index, let value?) in parameters.enumerated() where value.utf8.contains(0) {
            throw Self.nulByte(in: "parameter $\(index + 1)")
        }
        let result = Self.withCStrings(parameters) { values in
            PQexecPrepared(connection, name, Int32(parameters.count), values, nil, nil, 0)
        }
        defer { PQclear(result) }
        do {
            return Self.copy(try check(result, on: connection))
        } catch {
            // A schema change can invalidate a cached plan (0A000), and a script can DEALLOCATE it (26000):
            // prepare afresh next time.
            if error.sqlState == "0A000" || error.sqlState == "26000" { statementNames[sql] = nil }
            throw error
        }
    }

    /// Runs a script of several statements with no parameters (migrations). PQexec.
    public func executeScript(_ sql: String) throws(PostgresError) {
        let connection = try usableHandle()
        guard !sql.utf8.contains(0) else { throw Self.nulByte(in: "the script") }
        let result = PQexec(connection, sql)
        defer { PQclear(result) }
        _ = try check(result, on: connection)
    }

    /// False once the server session is gone; the pool then replaces this connection.
    var isUsable: Bool { handle.map { PQstatus($0) == CONNECTION_OK } ?? false }

    /// The server process serving this connection (PQbackendPID), while connected: what `pg_terminate_backend`
    /// takes to end a session whose connection was lost but whose transaction may live on.
    public var backendPID: Int32? {
        guard let handle else { return nil }
        let pid = PQbackendPID(handle)
        return pid > 0 ? pid : nil
    }

    /// Leaves the connection idle for its next borrower by rolling back a transaction left open. Returns false
    /// when the connection cannot be reused. PQtransactionStatus.
    func resetForReuse() -> Bool {
        guard let handle, isUsable else { return false }
        switch PQtransactionStatus(handle) {
        case PQTRANS_IDLE:
            return true
        case PQTRANS_INTRANS, PQTRANS_INERROR:
            let result = PQexec(handle, "ROLLBACK")
            defer { PQclear(result) }
            return result.map(PQresultStatus) == PGRES_COMMAND_OK
        default:
            return false
        }
    }

    /// Waits up to `timeoutMs` for notifications on the channels this session LISTENs to, and returns their
    /// channel names (empty after the timeout). Blocks: only a thread of its own may call it. PQsocket, poll,
    /// PQconsumeInput, PQnotifies.
    func waitForNotifications(timeoutMs: Int32) throws(PostgresError) -> [String] {
        let connection = try usableHandle()
        var channels = Self.drainNotifications(connection)
        guard channels.isEmpty else { return channels }
        var descriptor = pollfd(fd: PQsocket(connection), events: Int16(POLLIN), revents: 0)
        guard descriptor.fd >= 0 else {
            throw PostgresError(code: .connectionFailed, detail: "the connection has no socket")
        }
        let ready = poll(&descriptor, 1, timeoutMs)
        guard ready > 0 else { return [] }
        guard PQconsumeInput(connection) == 1 else {
            throw PostgresError(code: .connectionFailed, detail: Self.message(of: connection))
        }
        channels = Self.drainNotifications(connection)
        return channels
    }

    private static func drainNotifications(_ connection: OpaquePointer) -> [String] {
        var channels: [String] = []
        while let notification = PQnotifies(connection) {
            channels.append(String(cString: notification.pointee.relname))
            PQfreemem(notification)
        }
        return channels
    }

    /// Ends the server session. PQfinish.
    func close() {
        if let handle { PQfinish(handle) }
        handle = nil
        statementNames = [:]
    }

    private func usableHandle() throws(PostgresError) -> OpaquePointer {
        guard let handle, isUsable else {
            throw PostgresError(code: .connectionFailed, detail: "the connection is closed or broken")
        }
        return handle
    }

    /// The name `sql` is prepared under, preparing it on first use. PQprepare.
    private func preparedStatement(for sql: String, on connection: OpaquePointer) throws(PostgresError) -> String {
        if let name = statementNames[sql] { return name }
        guard !sql.utf8.contains(0) else { throw Self.nulByte(in: "the statement") }
        if statementNames.count >= Self.statementCacheLimit, PQtransactionStatus(connection) == PQTRANS_IDLE {
            let result = PQexec(connection, "DEALLOCATE ALL")
            defer { PQclear(result) }
            _ = try check(result, on: connection)
            statementNames = [:]
        }
        statementCount += 1
        let name = "statefn_\(statementCount)"
        let result = PQprepare(connection, name, sql, 0, nil)
        defer { PQclear(result) }
        _ = try check(result, on: connection)
        statementNames[sql] = name
        return name
    }

    /// Returns a successful result, or throws the server's error. The caller still owns and clears `result`.
    private func check(_ result: OpaquePointer?, on connection: OpaquePointer) throws(PostgresError) -> OpaquePointer {
        if let result {
            switch PQresultStatus(result) {
            case PGRES_COMMAND_OK, PGRES_TUPLES_OK, PGRES_EMPTY_QUERY:
                return result
            case PGRES_COPY_IN, PGRES_COPY_OUT, PGRES_COPY_BOTH:
                // The session is now mid-COPY, which this API cannot finish: give it up.
                close()
                throw PostgresError(code: .queryFailed, detail: "COPY is not supported")
            default:
                break
            }
        }
        let sqlState = result.flatMap { clibpq_result_sqlstate($0) }.map { String(cString: $0) }
        let message = result.flatMap { clibpq_result_primary_message($0) }.map { String(cString: $0) }
            ?? Self.message(of: connection)
        // Every error the server sends carries a SQLSTATE; one without is libpq's own ("server closed the connection
        // unexpectedly"), and means the connection is gone even when PQstatus has not caught up yet.
        let code: PostgresError.Code =
            PQstatus(connection) == CONNECTION_OK && sqlState != nil ? .queryFailed : .connectionFailed
        throw PostgresError(code: code, sqlState: sqlState, detail: message)
    }

    private static func message(of connection: OpaquePointer) -> String {
        PQerrorMessage(connection).map { String(cString: $0).trimmingSuffix(while: \.isNewline) } ?? "unknown libpq error"
    }

    /// PostgreSQL text cannot hold NUL, and libpq would silently cut the C string there.
    private static func nulByte(in what: String) -> PostgresError {
        PostgresError(code: .queryFailed, sqlState: "22021", detail: "\(what) contains a NUL byte")
    }

    /// Copies a successful PGresult out as text. PQgetvalue, PQcmdTuples.
    private static func copy(_ result: OpaquePointer) -> PostgresResult {
        let rowCount = PQntuples(result)
        let columnCount = PQnfields(result)
        let columns = (0..<columnCount).map { String(cString: PQfname(result, $0)) }
        var rows: [[String?]] = []
        rows.reserveCapacity(Int(rowCount))
        for row in 0..<rowCount {
            var values: [String?] = []
            values.reserveCapacity(Int(columnCount))
            for column in 0..<columnCount {
                if PQgetisnull(result, row, column) == 1 {
                    values.append(nil)
                } else {
                    let bytes = UnsafeRawBufferPointer(
                        start: PQgetvalue(result, row, column), count: Int(PQgetlength(result, row, column)))
                    values.append(String(decoding: bytes, as: UTF8.self))
                }
            }
            rows.append(values)
        }
        let affectedRows = PQcmdTuples(result).flatMap { Int(String(cString: $0)) } ?? 0
        return PostgresResult(columns: columns, rows: rows, affectedRows: affectedRows)
    }

    /// Lays the parameters out as NUL-terminated strings in one buffer, so a call allocates a fixed few times
    /// rather than once per value; `nil` stays a NULL pointer, which libpq sends as SQL NULL.
    private static func withCStrings<R>(
        _ strings: [String?], _ body: (UnsafePointer<UnsafePointer<CChar>?>?) -> R
    ) -> R {
        var bytes: [UInt8] = []
        bytes.reserveCapacity(strings.reduce(0) { $0 + ($1?.utf8.count ?? 0) + 1 })
        var offsets: [Int?] = []
        offsets.reserveCapacity(strings.count)
        for string in strings {
            guard let string else {
                offsets.append(nil)
                continue
            }
            offsets.append(bytes.count)
            bytes.append(contentsOf: string.utf8)
            bytes.append(0)
        }
        return bytes.withUnsafeBytes { buffer in
            withUnsafeTemporaryAllocation(of: UnsafePointer<CChar>?.self, capacity: offsets.count) { pointers in
                for (index, offset) in offsets.enumerated() {
                    pointers[index] = offset.map { (buffer.baseAddress! + $0).assumingMemoryBound(to: CChar.self) }
                }
                return body(UnsafePointer(pointers.baseAddress))
            }
        }
    }
}

@available(*, unavailable)
extension PostgresConnection: Sendable {}
