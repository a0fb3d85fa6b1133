// Statements against the real test cluster: parameters, NULLs, row counts, and SQLSTATEs as the server sends them.
import Foundation
import Testing

@testable import StatefnPostgres
import StatefnTestSupport

@Suite(.timeLimit(.minutes(3))) struct PostgresConnectionTests {
    @Test func executeBindsTextParametersAndNULLs() async throws {
        let pool = PostgresPool(config: try PostgresConfig(try await TestDatabase.conninfo()), size: 1, logger: TestDatabase.logger)
        defer { pool.close() }
        let result = try await pool.execute(
            "SELECT $1::int + 1 AS next, $2::text AS nothing, $3::text AS word, '' AS empty",
            ["41", nil, "grüße 'quoted'"])
        #expect(result.columns == ["next", "nothing", "word", "empty"])
        #expect(result.rows == [["42", nil, "grüße 'quoted'", ""]])
        #expect(result.affectedRows == 1)
    }

    @Test func affectedRowsCountsWrites() async throws {
        let pool = PostgresPool(config: try PostgresConfig(try await TestDatabase.conninfo()), size: 1, logger: TestDatabase.logger)
        defer { pool.close() }
        let table = uniqueName("counts")
        let created = try await pool.execute("CREATE TABLE \(table) (id bigint PRIMARY KEY, note text)")
        #expect(created.affectedRows == 0)
        #expect(created.rows.isEmpty)
        let insert = "INSERT INTO \(table) (id, note) VALUES ($1::bigint, $2)"
        for id in 1...3 { _ = try await pool.execute(insert, [String(id), id == 2 ? nil : "n\(id)"]) }
        let updated = try await pool.execute("UPDATE \(table) SET note = $1 WHERE id >= $2::bigint", ["x", "2"])
        #expect(updated.affectedRows == 2)
        let rows = try await pool.execute("SELECT id, note FROM \(table) WHERE note IS NULL OR id = 1 ORDER BY id")
        #expect(rows.rows == [["1", "n1"]])
        let deleted = try await pool.execute("DELETE FROM \(table) WHERE id > $1::bigint", ["0"])
        #expect(deleted.affectedRows == 3)
    }

    @Test func uniqueViolationAndSyntaxErrorCarryTheirSQLSTATE() async throws {
        let pool = PostgresPool(config: try PostgresConfig(try await TestDatabase.conninfo()), size: 1, logger: TestDatabase.logger)
        defer { pool.close() }
        let table = uniqueName("unique")
        try await pool.withConnection { try $0.executeScript("CREATE TABLE \(table) (id text PRIMARY KEY)") }
        let insert = "INSERT INTO \(table) (id) VALUES ($1)"
        _ = try await pool.execute(insert, ["secret-value"])
        let duplicate = await expectPostgresError { _ = try await pool.execute(insert, ["secret-value"]) }
        #expect(duplicate?.code == .queryFailed)
        #expect(duplicate?.sqlState == "23505")
        #expect(duplicate?.detail.contains("duplicate key") == true)
        #expect(duplicate?.description.contains("secret-value") == false)
        #expect(duplicate?.description.contains(table) == false)

        let syntax = await expectPostgresError { _ = try await pool.execute("SELEKT 1 FROM \(table)") }
        #expect(syntax?.code == .queryFailed)
        #expect(syntax?.sqlState == "42601")
        #expect(syntax?.description == "database error (query_failed, SQLSTATE 42601)")
        // The connection stays usable after errors, and the failed statement is not cached.
        #expect(try await pool.execute("SELECT count(*) FROM \(table)").rows == [["1"]])
    }

    @Test func scriptsRunSeveralStatements() async throws {
        let pool = PostgresPool(config: try PostgresConfig(try await TestDatabase.conninfo()), size: 1, logger: TestDatabase.logger)
        defer { pool.close() }
        let table = uniqueName("script")
        let count = try await pool.withConnection { connection in
            try connection.executeScript(
                """
                CREATE TABLE \(table) (id bigint PRIMARY KEY, body jsonb NOT NULL);
                INSERT INTO \(table) VALUES (1, '{"a": 1}'), (2, '{"b": [true, null]}');
                """)
            return try connection.execute("SELECT count(*) FROM \(table)").rows
        }
        #expect(count == [["2"]])
        let broken = await expectPostgresError {
            try await pool.withConnection { try $0.executeScript("SELECT 1; SELECT nosuchcolumn FROM \(table);") }
        }
        #expect(broken?.sqlState == "42703")
    }

    @Test func aNULByteIsRefusedRatherThanCutShort() async throws {
        let pool = PostgresPool(config: try PostgresConfig(try await TestDatabase.conninfo()), size: 1, logger: TestDatabase.logger)
        defer { pool.close() }
        let error = await expectPostgresError { _ = try await pool.execute("SELECT $1::text", ["a\u{0}b"]) }
        #expect(error?.sqlState == "22021")
        #expect(try await pool.execute("SELECT 1").rows == [["1"]])
    }

    @Test func writeSkewUnderSerializableIsARetryableFailure() async throws {
        let config = try PostgresConfig(try await TestDatabase.conninfo())
        let table = uniqueName("doctors")
        let failure = try await onThread { () throws -> PostgresError? in
            let first = try PostgresConnection(config: config)
            let second = try PostgresConnection(config: config)
            try first.executeScript(
                "CREATE TABLE \(table) (name text PRIMARY KEY, on_call boolean); "
                    + "INSERT INTO \(table) VALUES ('alice', true), ('bob', true)")
            // Each transaction sees two doctors on call and takes one off: together they break the invariant.
            for connection in [first, second] {
                try connection.executeScript("BEGIN ISOLATION LEVEL SERIALIZABLE")
                _ = try connection.execute("SELECT count(*) FROM \(table) WHERE on_call")
            }
            _ = try first.execute("UPDATE \(table) SET on_call = false WHERE name = 'alice'")
            do throws(PostgresError) {
                _ = try second.execute("UPDATE \(table) SET on_call = false WHERE name = 'bob'")
                try first.executeScript("COMMIT")
                try second.executeScript("COMMIT")
                return nil
            } catch {
                return error
            }
        }
        #expect(failure?.sqlState == "40001")
        #expect(failure?.isRetryableTransactionFailure == true)
        #expect(failure?.isUnknownCommitOutcome == false)
    }
}

/// Tests share one cluster and run in parallel: each gets its own tables.
func uniqueName(_ prefix: String) -> String {
    "\(prefix)_\(UUID().uuidString.replacingOccurrences(of: "-", with: "").prefix(12).lowercased())"
}
