// Migrations and compare-and-set commits against a real PostgreSQL that the tests start themselves.
import Logging
@testable import StatefnCore
import StatefnJSON
import StatefnPostgres
import StatefnTestSupport
import Testing

@Suite("entity store on PostgreSQL", .timeLimit(.minutes(3)))
struct EntityStoreTests {
    static let logger = Logger(label: "test")

    static func migratedPool() async throws -> PostgresPool {
        let pool = PostgresPool(config: try PostgresConfig(try await TestDatabase.createDatabase()), size: 4, logger: logger)
        let migrator = try Migrator(directory: GatewayProcess.repositoryRoot + "/migrations")
        try await migrator.apply(on: pool, logger: logger)
        return pool
    }

    @Test func migrationsApplyOnceEvenWhenRacing() async throws {
        let database = try await TestDatabase.createDatabase()
        let migrator = try Migrator(directory: GatewayProcess.repositoryRoot + "/migrations")
        #expect(migrator.migrations.first?.name == "0001_init")
        let pools = try (0..<3).map { _ in PostgresPool(config: try PostgresConfig(database), size: 1, logger: Self.logger) }
        let applied = try await withThrowingTaskGroup(of: [String].self) { group in
            for pool in pools { group.addTask { try await migrator.apply(on: pool, logger: Self.logger) } }
            return try await group.reduce(into: []) { $0 += $1 }
        }
        #expect(applied.sorted() == migrator.migrations.map(\.name), "each applied once, by one of the racers")
        #expect(try await migrator.isUpToDate(on: pools[0]))
        #expect(try await migrator.apply(on: pools[0], logger: Self.logger).isEmpty)
        for pool in pools { pool.close() }
    }

    @Test func compareAndSetCommits() async throws {
        let pool = try await Self.migratedPool()
        defer { pool.close() }
        let store = EntityStore(pool: pool, logger: Self.logger)
        let key = EntityKey(function: "counter", entity: "a")
        func commit(_ seen: Int64, _ change: CommitRequest.Change, events: [String] = []) async throws -> CommitOutcome {
            try await store.commit(
                CommitRequest(key: key, seenVersion: seen, change: change, events: events, effects: [], principal: "null"))
        }

        #expect(try await store.load(key) == .absent)
        #expect(try await commit(0, .replace(#"{"value":1}"#)) == .committed(version: 1))
        #expect(try await commit(0, .replace(#"{"value":9}"#)) == .conflict, "a lost insert race is a conflict")
        #expect(try await commit(1, .replace(#"{"value":2}"#), events: [#"{"type":"a"}"#, #"{"type":"b"}"#]) == .committed(version: 2))
        #expect(try await commit(1, .replace(#"{"value":3}"#)) == .conflict, "a stale version is a conflict")
        #expect(try await store.load(key) == EntitySnapshot(state: ["value": 2], version: 2))

        let events = try await pool.execute(
            "SELECT seq, event::text FROM entity_events WHERE function = 'counter' AND entity_id = 'a' ORDER BY seq")
        #expect(events.rows.map { $0[0] } == ["1", "2"])

        #expect(try await commit(2, .delete) == .committed(version: 3), "a delete leaves a tombstone at a new version")
        #expect(try await store.load(key) == EntitySnapshot(state: .null, version: 3))
        #expect(try await commit(0, .replace("[]")) == .conflict, "versions are never reused after a delete")
        #expect(try await commit(2, .replace("[]")) == .conflict, "a copy from before the delete cannot write")
        #expect(try await commit(3, .replace("[]")) == .committed(version: 4), "a deleted entity starts again")
    }

    @Test func effectsGoToTheOutboxWithTheState() async throws {
        let pool = try await Self.migratedPool()
        defer { pool.close() }
        let store = EntityStore(pool: pool, logger: Self.logger)
        let key = EntityKey(function: "cart", entity: "bob")
        let effect = CommitRequest.Effect(function: "inventory", entity: "rose", command: "reserve", payload: #"{"qty":2}"#, delayMs: 3_600_000)
        let outcome = try await store.commit(
            CommitRequest(key: key, seenVersion: 0, change: .replace("{}"), events: [], effects: [effect], principal: "null"))
        #expect(outcome == .committed(version: 1))
        let rows = try await pool.execute(
            "SELECT function, entity_id, command, payload::text, not_before > now() FROM outbox")
        #expect(rows.rows == [["inventory", "rose", "reserve", #"{"qty": 2}"#, "t"]])

        // A conflicting commit writes no outbox row.
        let lost = try await store.commit(
            CommitRequest(key: key, seenVersion: 0, change: .replace("{}"), events: [], effects: [effect], principal: "null"))
        #expect(lost == .conflict)
        #expect(try await pool.execute("SELECT count(*) FROM outbox").rows == [["1"]])
    }

    @Test func stateKeepsNumbersExactly() async throws {
        let pool = try await Self.migratedPool()
        defer { pool.close() }
        let store = EntityStore(pool: pool, logger: Self.logger)
        let key = EntityKey(function: "cart", entity: "n")
        let state = try JSONValue.parse(#"{"price":99.99,"ref":9007199254740993,"tiny":1.5e-7}"#, limits: .client)
        _ = try await store.commit(
            CommitRequest(key: key, seenVersion: 0, change: .replace(state.encodedString()), events: [], effects: [], principal: "null"))
        let loaded = try await store.load(key)
        #expect(loaded.state["price"] == .double(99.99))
        #expect(loaded.state["ref"] == .integer(9007199254740993))
        #expect(loaded.state["tiny"] == .double(1.5e-7))
    }
}
