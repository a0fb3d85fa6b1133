// Migrations and compare-and-set commits against a real PostgreSQL that the tests start themselves.
import Logging
import StatefnJSON
import StatefnPostgres
import StatefnTestSupport
import Testing

@testable import StatefnCore

@Suite("entity store on PostgreSQL", .timeLimit(.minutes(3)))
struct EntityStoreTests {
    static let logger = Logger(label: "test")

    static func migratedPool() async throws -> PostgresPool {
        let pool = PostgresPool(
            config: try PostgresConfig(try await TestDatabase.createDatabase()), size: 4, logger: logger)
        let migrator = try Migrator(directory: GatewayProcess.repositoryRoot + "/migrations")
        try await migrator.apply(on: pool, logger: logger)
        return pool
    }

    @Test func migrationsApplyOnceEvenWhenRacing() async throws {
        let database = try await TestDatabase.createDatabase()
        let migrator = try Migrator(directory: GatewayProcess.repositoryRoot + "/migrations")
        #expect(migrator.migrations.first?.name == "0001_init")
        let pools = try (0..<3).map { _ in
            PostgresPool(config: try PostgresConfig(database), size: 1, logger: Self.logger)
        }
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
        func commit(_ seen: Int64, _ change: CommitRequest.Change, events: [String] = []) async throws -> CommitOutcome
        {
            try await store.commit(
                CommitRequest(
                    key: key, seenVersion: seen, change: change, events: events, effects: [], principal: "null"))
        }

        #expect(try await store.load(key) == .absent)
        #expect(try await commit(0, .replace(#"{"value":1}"#)) == .committed(version: 1))
        #expect(try await commit(0, .replace(#"{"value":9}"#)) == .conflict, "a lost insert race is a conflict")
        #expect(
            try await commit(1, .replace(#"{"value":2}"#), events: [#"{"type":"a"}"#, #"{"type":"b"}"#])
                == .committed(version: 2))
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
        let effect = CommitRequest.Effect(
            function: "inventory", entity: "rose", command: "reserve", payload: #"{"qty":2}"#, delayMs: 3_600_000)
        let outcome = try await store.commit(
            CommitRequest(
                key: key, seenVersion: 0, change: .replace("{}"), events: [], effects: [effect], principal: "null"))
        #expect(outcome == .committed(version: 1))
        let rows = try await pool.execute(
            "SELECT function, entity_id, command, payload::text, not_before > now() FROM outbox")
        #expect(rows.rows == [["inventory", "rose", "reserve", #"{"qty": 2}"#, "t"]])

        // A conflicting commit writes no outbox row.
        let lost = try await store.commit(
            CommitRequest(
                key: key, seenVersion: 0, change: .replace("{}"), events: [], effects: [effect], principal: "null"))
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
            CommitRequest(
                key: key, seenVersion: 0, change: .replace(state.encodedString()), events: [], effects: [],
                principal: "null"))
        let loaded = try await store.load(key)
        #expect(loaded.state["price"] == .double(99.99))
        #expect(loaded.state["ref"] == .integer(9007199254740993))
        #expect(loaded.state["tiny"] == .double(1.5e-7))
    }
}

extension EntityStoreTests {
    /// A migrated database with `count` counter entities named `prefix` and a number, each at version 1 with
    /// `state`, and a store over it.
    static func seeded(_ prefix: String, count: Int, state: String) async throws
        -> (pool: PostgresPool, store: EntityStore, keys: [EntityKey])
    {
        let pool = try await migratedPool()
        let store = EntityStore(pool: pool, logger: logger)
        let keys = (0..<count).map { EntityKey(function: "counter", entity: "\(prefix)\($0)") }
        for key in keys {
            let outcome = try await store.commit(
                CommitRequest(
                    key: key, seenVersion: 0, change: .replace(state), events: [], effects: [], principal: "null"))
            #expect(outcome == .committed(version: 1))
        }
        return (pool, store, keys)
    }

    static func record(_ key: EntityKey, token: String, body: String) -> CommitRequest.IdempotencyRecord {
        .init(
            claim: IdempotencyClaim(caller: "alice", key: key, token: token, fingerprint: "f-" + token),
            answer: StoredAnswer(fingerprint: "f-" + token, status: 200, body: body, etag: "\"2\""), ttlMs: 60_000)
    }

    /// One group statement commits several entities; a stale member loses alone, and an idempotency record is
    /// written only with its entity's write. A record that is already there (a twin got there first) fails the
    /// statement, and the batch is committed again one by one, so that only the twin's member loses.
    @Test func aGroupCommitKeepsEachMembersOutcomeItsOwn() async throws {
        let (pool, store, keys) = try await Self.seeded("g", count: 5, state: "1")
        defer { pool.close() }
        func change(_ index: Int, seen: Int64, to state: String, steps: Int64 = 1, token: String? = nil)
            -> CommitRequest
        {
            var request = CommitRequest(
                key: keys[index], seenVersion: seen, change: .replace(state), events: [], effects: [],
                principal: "null",
                records: token.map { [Self.record(keys[index], token: $0, body: state)] } ?? [])
            request.steps = steps
            #expect(request.isGroupable)
            return request
        }
        var outcomes = try await store.commitGroup([
            change(0, seen: 1, to: "10", token: "k0"), change(1, seen: 7, to: "11", token: "k1"),
            change(2, seen: 1, to: "12", steps: 3), change(3, seen: 1, to: #"{"quote":"\"","back":"\\"}"#),
        ]).map { try $0.get() }
        #expect(outcomes == [.committed(version: 2), .conflict, .committed(version: 4), .committed(version: 2)])
        #expect(try await store.load(keys[1]) == EntitySnapshot(state: 1, version: 1), "the stale member wrote nothing")
        #expect(try await store.load(keys[2]) == EntitySnapshot(state: 12, version: 4))
        #expect(
            try await store.load(keys[3]).state == ["back": "\\", "quote": "\""],
            "quotes and backslashes survive the array")
        let records = try await pool.execute("SELECT entity_id, key FROM idempotency ORDER BY key").rows
        #expect(records == [["g0", "k0"]], "a record goes in only with its entity's write")

        // k0 is taken: its member loses (the next run replays the stored answer); the others still commit.
        outcomes = try await store.commitGroup([
            change(0, seen: 2, to: "20", token: "k0"), change(1, seen: 1, to: "21", token: "k1"),
            change(4, seen: 1, to: "24"),
        ]).map { try $0.get() }
        #expect(outcomes == [.conflict, .committed(version: 2), .committed(version: 2)])
        #expect(try await store.load(keys[0]) == EntitySnapshot(state: 10, version: 2))
        #expect(try await pool.execute("SELECT count(*) FROM idempotency").rows == [["2"]])
    }

    /// Commits of many entities at once share statements: fewer transactions than commits, and every commit's
    /// outcome is its own.
    @Test func concurrentCommitsShareGroupStatements() async throws {
        let (pool, store, keys) = try await Self.seeded("c", count: 200, state: "0")
        defer { pool.close() }
        let outcomes = try await withThrowingTaskGroup(of: CommitOutcome.self) { group in
            for (index, key) in keys.enumerated() {
                group.addTask {
                    // Every fifth is stale.
                    try await store.commit(
                        CommitRequest(
                            key: key, seenVersion: index % 5 == 0 ? 9 : 1, change: .replace("1"), events: [],
                            effects: [],
                            principal: "null"))
                }
            }
            return try await group.reduce(into: [CommitOutcome]()) { $0.append($1) }
        }
        #expect(outcomes.filter { $0 == .conflict }.count == 40)
        #expect(outcomes.filter { $0 == .committed(version: 2) }.count == 160)
        let rows = try await pool.execute("SELECT count(*) FROM entities WHERE state = '1'::jsonb").rows
        #expect(rows == [["160"]])
        let grouped = store.groupStatistics
        #expect(grouped.statements > 0 && grouped.commits > grouped.statements, "\(grouped): nothing was grouped")
    }

    /// A commit that only changes state leaves every indexed column as it was (migrations 0006, 0007), so PostgreSQL
    /// updates the row in place: a HOT update, which writes no index and leaves less to vacuum. Alone or grouped.
    @Test func stateChangesAreHOTUpdates() async throws {
        let (pool, store, keys) = try await Self.seeded("h", count: 20, state: "0")
        defer { pool.close() }
        for round in 1...10 {
            let outcomes = try await withThrowingTaskGroup(of: CommitOutcome.self) { group in
                for key in keys {
                    group.addTask {
                        try await store.commit(
                            CommitRequest(
                                key: key, seenVersion: Int64(round), change: .replace("\(round)"), events: [],
                                effects: [], principal: "null"))
                    }
                }
                return try await group.reduce(into: [CommitOutcome]()) { $0.append($1) }
            }
            #expect(outcomes.allSatisfy { $0 == .committed(version: Int64(round) + 1) }, "round \(round)")
        }
        #expect(try await pool.execute("SELECT count(*) FROM entities WHERE version = 11").rows == [["20"]])
        // Each backend reports its counts within a second or so of going idle, or at most after 10 s.
        var counts: (updates: Int, hot: Int) = (0, 0)
        let deadline = ContinuousClock.now + .seconds(30)
        while ContinuousClock.now < deadline {
            let row = try await pool.execute(
                "SELECT n_tup_upd, n_tup_hot_upd FROM pg_stat_user_tables WHERE relname = 'entities'"
            ).rows.first
            counts = (Int(row?[0] ?? "") ?? 0, Int(row?[1] ?? "") ?? 0)
            if counts.updates >= 200 { break }
            try await Task.sleep(for: .milliseconds(250))
        }
        print("entities: \(counts.updates) updates, \(counts.hot) of them HOT")
        #expect(counts.updates >= 200)
        #expect(counts.hot * 10 >= counts.updates * 9, "\(counts): updates write the indexes")
    }

    /// The TTL sweeper finds candidates by `touched_at` and keeps to `updated_at`: a row from before migration
    /// 0006 (no `touched_at`) expires, and one that another writer made young again without moving `touched_at`
    /// stays.
    @Test func expiryFindsEntitiesByTouchedAt() async throws {
        let pool = try await Self.migratedPool()
        defer { pool.close() }
        _ = try await pool.execute(
            """
            INSERT INTO entities (function, entity_id, state, version, updated_at, touched_at) VALUES
                ('f', 'old', '1', 1, now() - INTERVAL '2 hours', now() - INTERVAL '2 hours'),
                ('f', 'unmarked', '1', 1, now() - INTERVAL '2 hours', NULL),
                ('f', 'young-again', '1', 1, now(), now() - INTERVAL '2 hours'),
                ('f', 'fresh', '1', 1, now(), now()),
                ('g', 'other-function', '1', 1, now() - INTERVAL '2 hours', now() - INTERVAL '2 hours')
            """)
        let expiry = ExpiryStore(pool: pool)
        #expect(try await expiry.expireStates(of: "f", ttlMs: 3_600_000, limit: 500) == 2)
        let rows = try await pool.execute(
            "SELECT entity_id, state::text, version, touched_at >= now() - INTERVAL '1 minute' FROM entities "
                + "ORDER BY function, entity_id"
        ).rows
        #expect(
            rows == [
                ["fresh", "1", "1", "t"], ["old", "null", "2", "t"], ["unmarked", "null", "2", "t"],
                ["young-again", "1", "1", "f"], ["other-function", "1", "1", "f"],
            ])
    }
}
