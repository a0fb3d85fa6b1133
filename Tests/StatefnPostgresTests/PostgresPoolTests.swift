// The pool against the real test cluster: many concurrent callers, transactions left open, connections that
// break, servers that are not there, and callers that wait too long.
import Dispatch
import Foundation
import Testing

import StatefnPostgres
import StatefnTestSupport

@Suite(.timeLimit(.minutes(3))) struct PostgresPoolTests {
    @Test func manyConcurrentCallersShareAFewConnections() async throws {
        let pool = PostgresPool(config: try PostgresConfig(try await TestDatabase.conninfo()), size: 4, logger: TestDatabase.logger)
        defer { pool.close() }
        let results = try await withThrowingTaskGroup(of: (Int, [[String?]], String).self) { group in
            for index in 0..<200 {
                group.addTask {
                    let result = try await pool.execute("SELECT $1::int * 2, pg_backend_pid()", [String(index)])
                    return (index, result.rows, result.rows[0][1] ?? "")
                }
            }
            return try await group.reduce(into: []) { $0.append($1) }
        }
        #expect(results.count == 200)
        #expect(results.allSatisfy { index, rows, _ in rows[0][0] == String(index * 2) })
        #expect(Set(results.map(\.2)).count <= 4)
    }

    @Test func aTransactionLeftOpenIsRolledBack() async throws {
        let pool = PostgresPool(config: try PostgresConfig(try await TestDatabase.conninfo()), size: 1, logger: TestDatabase.logger)
        defer { pool.close() }
        let table = uniqueName("abandoned")
        _ = try await pool.execute("CREATE TABLE \(table) (id bigint PRIMARY KEY)")
        try await pool.withConnection { connection in
            try connection.executeScript("BEGIN")
            _ = try connection.execute("INSERT INTO \(table) VALUES (1)")
        }
        // The same (only) connection: had the transaction stayed open, it would see its own row.
        #expect(try await pool.execute("SELECT count(*) FROM \(table)").rows == [["0"]])

        try await pool.withConnection { connection in
            try connection.executeScript("BEGIN")
            _ = try? connection.execute("SELECT nosuchcolumn FROM \(table)")
        }
        #expect(try await pool.execute("INSERT INTO \(table) VALUES (2)").affectedRows == 1)
    }

    @Test func aConnectionKilledServerSideFailsOnceThenIsReplaced() async throws {
        let config = try PostgresConfig(try await TestDatabase.conninfo())
        let pool = PostgresPool(config: config, size: 1, logger: TestDatabase.logger)
        let admin = PostgresPool(config: config, size: 1, logger: TestDatabase.logger)
        defer {
            pool.close()
            admin.close()
        }
        let query = "SELECT pg_backend_pid()"
        let victim = try await pool.execute(query).rows[0][0]!
        let terminated = try await admin.execute("SELECT pg_terminate_backend($1::int, 60000)", [victim])
        #expect(terminated.rows == [["t"]])

        let failure = await expectPostgresError { _ = try await pool.execute(query) }
        #expect(failure?.code == .connectionFailed)
        let replacement = try await pool.execute(query).rows[0][0]!
        #expect(replacement != victim)
    }

    @Test func aServerThatIsNotThereFailsPromptly() async throws {
        let pool = PostgresPool(
            config: try PostgresConfig("host=/tmp/statefn-no-such-server user=statefn dbname=postgres"), size: 2,
            logger: TestDatabase.logger)
        defer { pool.close() }
        for _ in 0..<2 {
            let failure = await expectPostgresError { _ = try await pool.execute("SELECT 1") }
            #expect(failure?.code == .connectionFailed)
            #expect(failure?.description == "database error (connection_failed)")
        }
    }

    @Test func aCallerWaitingTooLongGetsPoolTimeout() async throws {
        let pool = PostgresPool(
            config: try PostgresConfig(try await TestDatabase.conninfo()), size: 1, logger: TestDatabase.logger,
            waitTimeout: .milliseconds(300))
        defer { pool.close() }
        let (release, holder) = await holdTheOnlyConnection(of: pool, thenSelect: "held")

        let failure = await expectPostgresError { _ = try await pool.execute("SELECT 1") }
        #expect(failure?.code == .poolTimeout)
        release.signal()
        #expect(try await holder.value == [["held"]])
        #expect(try await pool.execute("SELECT 2").rows == [["2"]])
    }

    @Test func aClosedPoolRefusesCallsAndFailsItsWaiters() async throws {
        let pool = PostgresPool(config: try PostgresConfig(try await TestDatabase.conninfo()), size: 1, logger: TestDatabase.logger)
        let (release, holder) = await holdTheOnlyConnection(of: pool, thenSelect: "finished")
        // Started in place, the waiter has asked for the (taken) connection and is queued by the time this returns.
        let waiter = Task.immediate { try await pool.execute("SELECT 1") }
        pool.close()
        release.signal()

        #expect(try await holder.value == [["finished"]])
        let waiterFailure = await expectPostgresError { _ = try await waiter.value }
        #expect(waiterFailure?.code == .poolClosed)
        // The only sign that the pool counted it as a waiter, and not as a call after the close.
        #expect(waiterFailure?.detail == "the pool was closed while waiting")
        let late = await expectPostgresError { _ = try await pool.execute("SELECT 1") }
        #expect(late?.code == .poolClosed)
    }
}

/// Takes `pool`'s only connection and keeps it until `release` is signalled, then selects `text` on it. Returns
/// once the connection is taken.
private func holdTheOnlyConnection(of pool: PostgresPool, thenSelect text: String) async
    -> (release: DispatchSemaphore, holder: Task<[[String?]], any Error>)
{
    let release = DispatchSemaphore(value: 0)
    let (started, startedContinuation) = AsyncStream<Void>.makeStream()
    let holder = Task {
        try await pool.withConnection { connection in
            startedContinuation.yield()
            _ = release.wait(timeout: .now() + 120)
            return try connection.execute("SELECT '\(text)'").rows
        }
    }
    for await _ in started { break }
    return (release, holder)
}
