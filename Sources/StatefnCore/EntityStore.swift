// Reads and commits entity state (DESIGN.md sections 4 and 5): the SQL of the request path. No transaction is ever
// held open while a worker runs: state is read, the worker runs, and the commit is a compare-and-set on the version
// read. The Committer decides what to commit and when; this file only says how.
import Logging
import Metrics
import StatefnJSON
import StatefnPostgres
import Synchronization

/// An entity's state as last read or committed. `null` state means absent: version 0 if it was never written, the
/// version of its deletion if it was deleted (a deleted entity keeps a tombstone row, so that versions are never
/// reused and a compare-and-set on a stale copy can never succeed after a delete and a re-create).
public struct EntitySnapshot: Sendable, Equatable {
    public var state: JSONValue
    public var version: Int64
    public static let absent = EntitySnapshot(state: .null, version: 0)
    public var exists: Bool { state != .null }
}

/// What one entity's commit writes: one command's answer, or the answers of several commands of one entity that ran
/// one after another, each on the state the one before it left (a hot entity's batch). A request that changes
/// nothing and carries nothing is a version check.
struct CommitRequest: Sendable {
    enum Change: Sendable {
        case unchanged
        /// The new state, already encoded (its size was checked against `max_state_bytes`).
        case replace(String)
        case delete
    }
    var key: EntityKey
    var seenVersion: Int64
    var change: Change
    /// How many versions the entity moves on (one per command that changed it), when the change is not `unchanged`.
    var steps: Int64 = 1
    var events: [Event]
    var effects: [Effect]
    /// The idempotency records to write in the same transaction, one per command that carried a key.
    var records: [IdempotencyRecord] = []

    /// One event, with the principal of the command that emitted it.
    struct Event: Sendable {
        var payload: String
        var principal: String
    }

    struct Effect: Sendable {
        var function: String
        var entity: String?
        var command: String
        var payload: String
        var delayMs: Int64
    }

    struct IdempotencyRecord: Sendable {
        var claim: IdempotencyClaim
        var answer: StoredAnswer
        var ttlMs: Int64
    }

    init(
        key: EntityKey, seenVersion: Int64, change: Change, events: [String], effects: [Effect], principal: String,
        records: [IdempotencyRecord] = []
    ) {
        self.key = key
        self.seenVersion = seenVersion
        self.change = change
        self.events = events.map { Event(payload: $0, principal: principal) }
        self.effects = effects
        self.records = records
    }

    /// Only checks that the entity is still at `seenVersion`.
    var isVersionCheck: Bool {
        if case .unchanged = change { return events.isEmpty && effects.isEmpty && records.isEmpty }
        return false
    }

    /// A change of an entity already written, with nothing else but, perhaps, idempotency records: what a group
    /// statement carries. (A first write is an insert, and a statement may modify `entities` only once on
    /// CockroachDB, so first writes go alone.)
    var isGroupable: Bool {
        guard events.isEmpty, effects.isEmpty, seenVersion > 0 else { return false }
        if case .unchanged = change { return false }
        return true
    }

    /// The version the entity has once this commits.
    var versionAfter: Int64 {
        if case .unchanged = change { return seenVersion }
        return seenVersion + steps
    }
}

enum CommitOutcome: Sendable, Equatable {
    /// Committed; the entity is now at this version.
    case committed(version: Int64)
    /// Another writer moved the entity past `seenVersion` first, or wrote the same idempotency record: read again.
    case conflict
    /// The commit's answer was lost and read back: it did not land, or, with an idempotency record, the next run
    /// decides (its record lookup, or its own insert of the record, which waits for a twin still in flight). Run
    /// again; this is a failure, not contention, so a spent budget answers 503, not 409. `certain`: the session
    /// that sent the commit is known to be gone, so nothing of it can still land.
    case notLanded(certain: Bool)
}

/// A commit whose outcome could not be learned: the connection was lost during COMMIT (or 40003), and reading back
/// could not tell whether it took effect.
struct CommitUncertain: Error {
    var detail: String
}

final class EntityStore: Sendable {
    private let pool: PostgresPool
    private let logger: Logger
    /// Transaction attempts on 40001/40P01 before giving up.
    private let maxTransactionAttempts = 8

    /// Whether a commit with events or effects sends NOTIFY (PostgreSQL), to wake other replicas' dispatchers and
    /// feeds; CockroachDB has none, and they poll.
    private let notifies: Bool

    /// Commits that change only state (and may remember an answer) share group statements, `commitLanes` at a
    /// time (GroupCommit.swift).
    private let groups: CommitGroups<CommitRequest, EntityKey, CommitOutcome>
    /// How many group statements have committed, and how many commits they carried (for tests and debugging).
    private let groupCounts = Mutex<(statements: Int, commits: Int)>((0, 0))
    var groupStatistics: (statements: Int, commits: Int) { groupCounts.withLock { $0 } }

    init(pool: PostgresPool, logger: Logger, notifies: Bool = false, commitLanes: Int = 1) {
        self.pool = pool
        self.logger = logger
        self.notifies = notifies
        // Two commits of one entity never share a statement (an update may not touch a row twice). The mailbox
        // already keeps one commit per entity in flight in this gateway; this is the rule, not the common case.
        groups = CommitGroups(lanes: commitLanes, maxBatch: 256, key: \.key)
    }

    func load(_ key: EntityKey) async throws -> EntitySnapshot { try await loadMeasured(key).snapshot }

    /// The snapshot and the length of its state's text (what the cache charges for it).
    func loadMeasured(_ key: EntityKey) async throws -> (snapshot: EntitySnapshot, bytes: Int) {
        let result = try await pool.read(
            "SELECT state::text, version FROM entities WHERE function = $1 AND entity_id = $2",
            [key.function, key.entity])
        guard let row = result.rows.first, let stateText = row[0], let versionText = row[1],
            let version = Int64(versionText)
        else { return (.absent, 4) }
        // jsonb may print numbers in forms the client never sent, so parse without client limits on size.
        let state = try JSONValue.parse(stateText, limits: JSONLimits(maxBytes: .max, maxDepth: 256))
        return (EntitySnapshot(state: state, version: version), stateText.utf8.count)
    }

    /// The stored answer under `claim`'s key, if there is one (expired or not: the sweeper removes expired ones).
    private func record(for claim: IdempotencyClaim) async throws -> StoredAnswer? {
        let result = try await pool.read(
            """
            SELECT request_hash, status, response, etag FROM idempotency
            WHERE caller = $1 AND function = $2 AND entity_id = $3 AND key = $4
            """, [claim.caller, claim.key.function, claim.key.entity, claim.token])
        guard let row = result.rows.first, let hash = row[0], let status = row[1].flatMap({ Int($0) }),
            let body = row[2]
        else { return nil }
        return StoredAnswer(fingerprint: hash, status: status, body: body, etag: row[3])
    }

    /// The stored answers under `claims`' keys, in order (nil where there is none), in one query.
    func records(for claims: [IdempotencyClaim]) async throws -> [StoredAnswer?] {
        if claims.isEmpty { return [] }
        if claims.count == 1 { return [try await record(for: claims[0])] }
        let rows = try await pool.read(
            """
            SELECT r.ordinality, i.request_hash, i.status, i.response, i.etag
            FROM unnest($1::text[], $2::text[], $3::text[], $4::text[]) WITH ORDINALITY
                AS r(caller, function, entity_id, key, ordinality)
            JOIN idempotency AS i
                ON i.caller = r.caller AND i.function = r.function AND i.entity_id = r.entity_id AND i.key = r.key
            """,
            [
                PostgresArray.text(claims.map(\.caller)), PostgresArray.text(claims.map(\.key.function)),
                PostgresArray.text(claims.map(\.key.entity)), PostgresArray.text(claims.map(\.token)),
            ]
        ).rows
        var answers = [StoredAnswer?](repeating: nil, count: claims.count)
        for row in rows {
            guard let position = row[0].flatMap({ Int($0) }), (1...claims.count).contains(position), let hash = row[1],
                let status = row[2].flatMap({ Int($0) }), let body = row[3]
            else { continue }
            answers[position - 1] = StoredAnswer(fingerprint: hash, status: status, body: body, etag: row[4])
        }
        return answers
    }

    /// A page of `function`'s entities (tombstones left out), ordered by id; the database's collation decides the
    /// order (bytes under the C collation of the embedded cluster, and on CockroachDB).
    func list(_ function: String, prefix: String, after: String, limit: Int) async throws -> [[String?]] {
        try await pool.read(
            """
            SELECT entity_id, version, CAST(extract(epoch FROM updated_at) * 1000 AS bigint) FROM entities
            WHERE function = $1 AND entity_id > $2 AND entity_id >= $3 AND substr(entity_id, 1, length($3)) = $3
                AND state <> 'null'::jsonb
            ORDER BY entity_id LIMIT $4::bigint
            """, [function, after, prefix, String(limit)]
        ).rows
    }

    /// Deletes up to `limit` expired idempotency records; returns how many went.
    func sweepExpiredRecords(limit: Int) async throws -> Int {
        let result = try await pool.execute(
            """
            DELETE FROM idempotency WHERE (caller, function, entity_id, key) IN (
                SELECT caller, function, entity_id, key FROM idempotency WHERE expires_at < now() LIMIT $1)
            """, [String(limit)])
        return result.affectedRows
    }

    /// jsonb keeps numbers as `numeric` and prints them without an exponent, so a double at or beyond 2^63 in
    /// magnitude (1e300, say) would come back as an integer literal too big to read, and the entity could never be
    /// loaded again. Such a state is refused before it is committed.
    static func numberBeyondJSONB(_ value: JSONValue) -> Double? {
        switch value {
        case .double(let number) where number.magnitude >= 0x1p63: return number
        case .array(let items):
            for item in items { if let found = numberBeyondJSONB(item) { return found } }
            return nil
        case .object(let object):
            for pair in object { if let found = numberBeyondJSONB(pair.value) { return found } }
            return nil
        default: return nil
        }
    }

    /// One CAS transaction: state, events, outbox rows and the idempotency record. Retried on 40001/40P01 with
    /// jittered exponential backoff. An unknown outcome (40003, or the connection lost while the last statement was
    /// on its way) is resolved by reading back, never by running the commit again blindly.
    /// A commit transaction tried again (or read back) after the database failed it, by SQLSTATE; a lost
    /// connection, which has none, counts as 08006.
    private static func countRetry(sqlState: String?) {
        Counter(label: "statefn_commit_retries_total", dimensions: [("sqlstate", sqlState ?? "unknown")]).increment()
    }

    /// Commits one entity's request: through a group statement when it changes only state (and may carry an
    /// idempotency record), else in a transaction of its own.
    func commit(_ request: CommitRequest) async throws -> CommitOutcome {
        guard request.isGroupable else { return try await commitAlone(request) }
        return try await groups.commit(request) { await self.commitGroup($0) }
    }

    /// One batch of groupable requests: one alone goes the way it always did; several go as one upsert (see
    /// `groupStatement`). A batch the database refuses as a whole (a twin's idempotency record, a serialization
    /// failure) is committed again one by one, so that what fails stays its own.
    func commitGroup(_ batch: [CommitRequest]) async -> [Result<CommitOutcome, any Error>] {
        if batch.count == 1 { return [await result { try await commitAlone(batch[0]) }] }
        var attempt = 1
        while true {
            do {
                let committed = try await withCommitConnection { try Self.commitGroup(batch, on: $0) }
                groupCounts.withLock {
                    $0.statements += 1
                    $0.commits += batch.count
                }
                return batch.map {
                    .success(committed.contains($0.key) ? .committed(version: $0.versionAfter) : .conflict)
                }
            } catch let error as PostgresError where error.code == .connectionFailed && attempt == 1 {
                // Lost before the statement went out (that one throws OutcomeUnknown): nothing was committed.
                Self.countRetry(sqlState: error.sqlState ?? "08006")
                attempt += 1
            } catch let error as OutcomeUnknown {
                logger.warning(
                    "group commit outcome unknown; reading back",
                    metadata: ["commits": "\(batch.count)", "error": "\(error.cause.logDescription)"])
                Self.countRetry(sqlState: error.cause.sqlState ?? "08006")
                // One session to end for the whole group, then every member read back at once.
                let sessionGone = await endSession(error.backend)
                return await withTaskGroup(of: (Int, Result<CommitOutcome, any Error>).self) { group in
                    for (index, request) in batch.enumerated() {
                        group.addTask {
                            (
                                index,
                                await result {
                                    try await self.readBack(request, cause: error.cause, sessionGone: sessionGone)
                                }
                            )
                        }
                    }
                    var results = [Result<CommitOutcome, any Error>](
                        repeating: .failure(error.cause), count: batch.count)
                    for await (index, outcome) in group { results[index] = outcome }
                    return results
                }
            } catch {
                // Refused as a whole for one member's sake (a twin's record, 23505; a serialization failure on one
                // hot row, 40001; anything else): each goes again alone, so that what fails stays its own.
                if let error = error as? PostgresError { Self.countRetry(sqlState: error.sqlState) }
                var results: [Result<CommitOutcome, any Error>] = []
                for request in batch { results.append(await result { try await commitAlone(request) }) }
                return results
            }
        }
    }

    /// Runs a commit on a pool connection; an unknown outcome it throws carries that connection's server process,
    /// which `resolve` must see end before it reads back.
    private func withCommitConnection<T: Sendable>(_ body: @escaping @Sendable (PostgresConnection) throws -> T)
        async throws -> T
    {
        try await pool.withConnection { connection in
            let backend = connection.backendPID
            do {
                return try body(connection)
            } catch var error as OutcomeUnknown {
                error.backend = backend
                throw error
            }
        }
    }

    private func commitAlone(_ request: CommitRequest) async throws -> CommitOutcome {
        var attempt = 1
        while true {
            do {
                return try await withCommitConnection { try Self.commit(request, on: $0, notifies: self.notifies) }
            } catch let error as PostgresError
                where error.isRetryableTransactionFailure && attempt < maxTransactionAttempts
            {
                logger.debug(
                    "commit retried", metadata: ["sqlstate": "\(error.sqlState ?? "")", "attempt": "\(attempt)"])
                Self.countRetry(sqlState: error.sqlState)
                let base = 2 << min(attempt, 8)  // ms: 4, 8, 16, ...
                try await Task.sleep(for: .milliseconds(Int.random(in: base / 2...base)))
                attempt += 1
            } catch let error as PostgresError where error.code == .connectionFailed && attempt == 1 {
                // Lost before the statement that decides the commit went out (that one throws OutcomeUnknown), so
                // nothing was committed: once more, on a connection that works.
                logger.debug("commit retried on a new connection", metadata: ["error": "\(error.logDescription)"])
                Self.countRetry(sqlState: error.sqlState ?? "08006")
                attempt += 1
            } catch let error as OutcomeUnknown {
                logger.warning(
                    "commit outcome unknown; reading back",
                    metadata: ["function": "\(request.key.function)", "error": "\(error.cause.logDescription)"])
                Self.countRetry(sqlState: error.cause.sqlState ?? "08006")
                return try await resolve(request, cause: error.cause, backend: error.backend)
            }
        }
    }

    /// Learns whether a commit whose answer was lost took effect.
    ///
    /// First the session that sent it must be gone: a connection can break (a proxy, a network partition) while its
    /// server session lives on, with the transaction still open or its last statement not yet run, and a read-back
    /// would then see "not landed" just before it lands. So the session is ended (`pg_terminate_backend`) and waited
    /// for. Then the entity row is locked, so a commit the server is still finishing is waited for, and read.
    ///
    /// With an idempotency record the answer is always "read again": the record is there (this commit, or a twin
    /// under the same key, landed: replay it) or it is not (nothing landed: run again; a twin still in flight holds
    /// the key's row, so the next attempt waits for it). Without one, an unmoved version proves nothing landed, but
    /// only once the old session is known to be gone; a moved version proves nothing either way.
    private func resolve(_ request: CommitRequest, cause: PostgresError, backend: Int32?) async throws -> CommitOutcome
    {
        try await readBack(request, cause: cause, sessionGone: await endSession(backend))
    }

    /// `resolve`'s read-back, once the session that sent the commit was ended (or could not be seen to end).
    private func readBack(_ request: CommitRequest, cause: PostgresError, sessionGone: Bool) async throws
        -> CommitOutcome
    {
        var lastError: any Error = cause
        for attempt in 1...5 {
            do {
                let version = try await pool.withConnection { db -> Int64 in
                    _ = try db.execute("BEGIN")
                    let result = try db.execute(
                        "SELECT version FROM entities WHERE function = $1 AND entity_id = $2 FOR UPDATE",
                        [request.key.function, request.key.entity])
                    _ = try db.execute("COMMIT")
                    return result.rows.first?[0].flatMap { Int64($0) } ?? 0
                }
                if !request.records.isEmpty { return .notLanded(certain: sessionGone) }
                if case .unchanged = request.change {
                    throw CommitUncertain(detail: "events or effects may or may not have been committed")
                }
                guard sessionGone else {
                    throw CommitUncertain(detail: "the session that sent the commit could not be seen to end")
                }
                if version == request.seenVersion { return .notLanded(certain: true) }
                throw CommitUncertain(
                    detail:
                        "the entity moved from version \(request.seenVersion) to \(version), by this commit or another")
            } catch let error as PostgresError {
                lastError = error
                try await Task.sleep(for: .milliseconds(100 * attempt))
            }
        }
        throw CommitUncertain(detail: "the database could not be read back: \(lastError)")
    }

    /// Ends the server session `backend` and waits (up to about 5 s) until it is gone; true once it is. False when
    /// that cannot be known: no pid, or a database without pg_terminate_backend and pg_stat_activity.
    private func endSession(_ backend: Int32?) async -> Bool {
        guard let backend else { return false }
        for _ in 0..<50 {
            do {
                let rows = try await pool.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE pid = $1::int", [String(backend)]
                ).rows
                if rows.isEmpty { return true }
            } catch {
                if (error as? PostgresError)?.code == .queryFailed { return false }
            }
            try? await Task.sleep(for: .milliseconds(100))
        }
        return false
    }

    /// Every member of `batch` in one statement, so one transaction: each entity's compare-and-set on the version
    /// its commands read, and each idempotency record only with its entity's write. Returns the entities written;
    /// the others lost their compare-and-set.
    private static func commitGroup(_ batch: [CommitRequest], on db: PostgresConnection) throws -> Set<EntityKey> {
        var entities = Array(repeating: [String?](), count: 5)
        var records = Array(repeating: [String?](), count: 9)
        for request in batch {
            let state: String
            switch request.change {
            case .replace(let encoded): state = encoded
            case .delete: state = "null"
            case .unchanged: preconditionFailure("a version check in a group commit")
            }
            let row = [
                request.key.function, request.key.entity, state, String(request.seenVersion),
                String(request.versionAfter),
            ]
            for (index, value) in row.enumerated() { entities[index].append(value) }
            for record in request.records {
                let claim = record.claim
                let row: [String?] = [
                    claim.key.function, claim.key.entity, claim.caller, claim.token, claim.fingerprint,
                    String(record.answer.status), record.answer.body, record.answer.etag, String(record.ttlMs),
                ]
                for (index, value) in row.enumerated() { records[index].append(value) }
            }
        }
        let written: PostgresResult
        do throws(PostgresError) {
            written = try db.execute(groupStatement, (entities + records).map { PostgresArray.text($0) })
        } catch {
            if error.code == .connectionFailed || error.isUnknownCommitOutcome { throw OutcomeUnknown(cause: error) }
            throw error
        }
        var keys = Set<EntityKey>()
        for row in written.rows {
            if let function = row[0], let entity = row[1] { keys.insert(EntityKey(function: function, entity: entity)) }
        }
        return keys
    }

    /// Each entity's compare-and-set, and the records of the entities written. `entities` is modified once, by one
    /// UPDATE, as CockroachDB requires of a statement.
    private static let groupStatement = """
        WITH input AS (
            SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::bigint[], $5::bigint[])
                AS i(function, entity_id, state, seen, next)
        ), written AS (
            UPDATE entities AS e SET state = i.state::jsonb, version = i.next, updated_at = now(),
                touched_at = \(touchedAt("e.touched_at"))
            FROM input AS i
            WHERE e.function = i.function AND e.entity_id = i.entity_id AND e.version = i.seen
            RETURNING e.function, e.entity_id
        ), recorded AS (
            INSERT INTO idempotency (caller, function, entity_id, key, request_hash, status, response, etag, expires_at)
            SELECT r.caller, r.function, r.entity_id, r.key, r.hash, r.status, r.response, r.etag,
                now() + r.ttl_ms * INTERVAL '1 millisecond'
            FROM unnest($6::text[], $7::text[], $8::text[], $9::text[], $10::text[], $11::bigint[], $12::text[],
                    $13::text[], $14::bigint[])
                AS r(function, entity_id, caller, key, hash, status, response, etag, ttl_ms)
            JOIN written AS w ON w.function = r.function AND w.entity_id = r.entity_id
        )
        SELECT function, entity_id FROM written
        """

    /// The new `touched_at` (migrations 0006 and 0007): the old one while it is under a minute old, so that a commit
    /// leaves every indexed column alone and PostgreSQL can update the row in place (a HOT update).
    private static func touchedAt(_ old: String) -> String {
        "CASE WHEN \(old) >= now() - INTERVAL '1 minute' THEN \(old) ELSE now() END"
    }

    private struct OutcomeUnknown: Error {
        var cause: PostgresError
        var backend: Int32?
    }

    private static func commit(_ request: CommitRequest, on db: PostgresConnection, notifies: Bool) throws
        -> CommitOutcome
    {
        let key = request.key
        if request.isVersionCheck {
            let result = try db.execute(
                "SELECT version FROM entities WHERE function = $1 AND entity_id = $2", [key.function, key.entity])
            let current = result.rows.first?[0].flatMap { Int64($0) } ?? 0
            return current == request.seenVersion ? .committed(version: current) : .conflict
        }
        // A state change alone, or an answer that changed nothing but must be remembered, is one statement: one
        // round trip and no explicit transaction.
        let single = request.events.isEmpty && request.effects.isEmpty
        if single, case .unchanged = request.change, request.records.count == 1 {
            return try decisive {
                let inserted = try insertRecord(request.records[0], onlyIfAt: request.seenVersion, on: db)
                return inserted ? .committed(version: request.seenVersion) : .conflict
            }
        }
        if single, request.records.isEmpty {
            return try decisive { try writeState(request, on: db) }
        }
        do {
            _ = try db.execute("BEGIN")
            let outcome = try writeState(request, on: db)
            guard case .committed = outcome else {
                _ = try db.execute("ROLLBACK")
                return outcome
            }
            for event in request.events {
                _ = try db.execute(
                    """
                    INSERT INTO entity_events (function, entity_id, seq, event, principal)
                    SELECT $1, $2, coalesce(max(seq), 0) + 1, $3::jsonb, $4::jsonb
                    FROM entity_events WHERE function = $1 AND entity_id = $2
                    """, [key.function, key.entity, event.payload, event.principal])
            }
            for effect in request.effects {
                _ = try db.execute(
                    """
                    INSERT INTO outbox (function, entity_id, command, payload, not_before, source_function, source_entity)
                    VALUES ($1, $2, $3, $4::jsonb, now() + $5::bigint * INTERVAL '1 millisecond', $6, $7)
                    """,
                    [
                        effect.function, effect.entity, effect.command, effect.payload, String(effect.delayMs),
                        key.function, key.entity,
                    ])
            }
            for record in request.records { _ = try insertRecord(record, onlyIfAt: nil, on: db) }
            // Delivered at COMMIT, and only if it commits.
            if notifies, !request.effects.isEmpty { _ = try db.execute("SELECT pg_notify('statefn_outbox', '')") }
            if notifies, !request.events.isEmpty { _ = try db.execute("SELECT pg_notify('statefn_events', '')") }
        } catch let error as PostgresError where error.sqlState == "23505" {
            // A twin under the same idempotency key, or another writer's event with the same seq, got there first.
            return .conflict
        }
        return try decisive {
            _ = try db.execute("COMMIT")
            return .committed(version: request.versionAfter)
        }
    }

    /// Runs the statement that decides a commit. The server may have committed it even when its answer never
    /// arrived, so a lost connection here, or 40003, is an unknown outcome; a unique violation is a lost race.
    private static func decisive(_ body: () throws -> CommitOutcome) throws -> CommitOutcome {
        do {
            return try body()
        } catch let error as PostgresError {
            if error.sqlState == "23505" { return .conflict }
            if error.code == .connectionFailed || error.isUnknownCommitOutcome { throw OutcomeUnknown(cause: error) }
            throw error
        }
    }

    /// The compare-and-set on the entity row; `.unchanged` locks the row and checks its version instead.
    private static func writeState(_ request: CommitRequest, on db: PostgresConnection) throws -> CommitOutcome {
        let key = request.key
        switch request.change {
        case .delete where request.seenVersion == 0:
            // A batch that created the entity and deleted it again: its tombstone keeps the versions handed out.
            let result = try db.execute(
                """
                INSERT INTO entities (function, entity_id, state, version, updated_at, touched_at)
                VALUES ($1, $2, 'null'::jsonb, $3::bigint, now(), now()) ON CONFLICT (function, entity_id) DO NOTHING
                """, [key.function, key.entity, String(request.versionAfter)])
            return result.affectedRows == 1 ? .committed(version: request.versionAfter) : .conflict
        case .replace(let state) where request.seenVersion == 0:
            let result = try db.execute(
                """
                INSERT INTO entities (function, entity_id, state, version, updated_at, touched_at)
                VALUES ($1, $2, $3::jsonb, $4::bigint, now(), now()) ON CONFLICT (function, entity_id) DO NOTHING
                """, [key.function, key.entity, state, String(request.versionAfter)])
            return result.affectedRows == 1 ? .committed(version: request.versionAfter) : .conflict
        case .replace(let state):
            return try compareAndSet(request, state: state, on: db)
        case .delete:
            // A tombstone, not a DELETE: the version goes on from here, so it is never reused.
            return try compareAndSet(request, state: "null", on: db)
        case .unchanged:
            // Events or effects without a state change still need the version to hold: lock the row and check it.
            let result = try db.execute(
                "SELECT version FROM entities WHERE function = $1 AND entity_id = $2 FOR UPDATE",
                [key.function, key.entity])
            let current = result.rows.first?[0].flatMap { Int64($0) } ?? 0
            return current == request.seenVersion ? .committed(version: current) : .conflict
        }
    }

    private static func compareAndSet(_ request: CommitRequest, state: String, on db: PostgresConnection) throws
        -> CommitOutcome
    {
        let result = try db.execute(
            """
            UPDATE entities SET state = $3::jsonb, version = $5::bigint, updated_at = now(),
                touched_at = \(touchedAt("touched_at"))
            WHERE function = $1 AND entity_id = $2 AND version = $4
            """,
            [
                request.key.function, request.key.entity, state, String(request.seenVersion),
                String(request.versionAfter),
            ])
        return result.affectedRows == 1 ? .committed(version: request.versionAfter) : .conflict
    }

    /// Writes the record; with `onlyIfAt`, only while the entity is still at that version (0: absent), so that one
    /// statement both checks the version and remembers the answer. Returns whether a row went in.
    private static func insertRecord(
        _ record: CommitRequest.IdempotencyRecord, onlyIfAt version: Int64?, on db: PostgresConnection
    ) throws -> Bool {
        let claim = record.claim
        var parameters: [String?] = [
            claim.caller, claim.key.function, claim.key.entity, claim.token, claim.fingerprint,
            String(record.answer.status), record.answer.body, record.answer.etag, String(record.ttlMs),
        ]
        let insert = """
            INSERT INTO idempotency (caller, function, entity_id, key, request_hash, status, response, etag, expires_at)
            SELECT $1, $2, $3, $4, $5, $6::bigint, $7, $8, now() + $9::bigint * INTERVAL '1 millisecond'
            """
        guard let version else { return try db.execute(insert, parameters).affectedRows == 1 }
        parameters.append(String(version))
        let result = try db.execute(
            insert + """

                WHERE coalesce((SELECT version FROM entities WHERE function = $2 AND entity_id = $3), 0) = $10::bigint
                """, parameters)
        return result.affectedRows == 1
    }
}
