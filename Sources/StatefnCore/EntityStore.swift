// Reads and commits entity state (DESIGN.md sections 1, 4 and 5). No transaction is ever held open while a worker
// runs: state is read, the worker runs, and the commit is a compare-and-set on the version read.
import Logging
import StatefnJSON
import StatefnPostgres

/// An entity's state as last read or committed. Version 0 with `null` state means never written.
public struct EntitySnapshot: Sendable, Equatable {
    public var state: JSONValue
    public var version: Int64
    public static let absent = EntitySnapshot(state: .null, version: 0)
}

/// What a command's worker asked to commit.
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
    var events: [String]
    var effects: [Effect]
    var principal: String

    struct Effect: Sendable {
        var function: String
        var entity: String?
        var command: String
        var payload: String
        var delayMs: Int64
    }

    /// True when nothing needs to be written at all.
    var isEmpty: Bool {
        if case .unchanged = change { return events.isEmpty && effects.isEmpty }
        return false
    }
}

enum CommitOutcome: Sendable, Equatable {
    /// Committed; the entity is now at this version (0 after a delete).
    case committed(version: Int64)
    /// Another writer moved the entity past `seenVersion` first: reload and run again.
    case conflict
}

final class EntityStore: Sendable {
    private let pool: PostgresPool
    private let logger: Logger
    /// Transaction attempts on 40001/40P01 before giving up.
    private let maxTransactionAttempts = 6

    init(pool: PostgresPool, logger: Logger) {
        self.pool = pool
        self.logger = logger
    }

    func load(_ key: EntityKey) async throws -> EntitySnapshot {
        let result = try await pool.execute(
            "SELECT state::text, version FROM entities WHERE function = $1 AND entity_id = $2",
            [key.function, key.entity])
        guard let row = result.rows.first, let stateText = row[0], let versionText = row[1],
            let version = Int64(versionText)
        else { return .absent }
        // jsonb may print numbers in forms the client never sent, so parse without client limits on size.
        let state = try JSONValue.parse(stateText, limits: JSONLimits(maxBytes: .max, maxDepth: 256))
        return EntitySnapshot(state: state, version: version)
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

    /// One all-or-nothing CAS transaction: state, events and outbox rows. Retried on 40001/40P01 with jittered
    /// exponential backoff; 40003 (unknown outcome) is not retried and surfaces as an error.
    func commit(_ request: CommitRequest) async throws -> CommitOutcome {
        var attempt = 1
        while true {
            do {
                return try await pool.withConnection { connection in
                    try Self.commit(request, on: connection)
                }
            } catch let error as PostgresError where error.isRetryableTransactionFailure && attempt < maxTransactionAttempts {
                logger.debug(
                    "commit retried", metadata: ["sqlstate": "\(error.sqlState ?? "")", "attempt": "\(attempt)"])
                let base = 2 << min(attempt, 8)  // ms: 4, 8, 16, ...
                try await Task.sleep(for: .milliseconds(Int.random(in: base / 2...base)))
                attempt += 1
            }
        }
    }

    private static func commit(_ request: CommitRequest, on db: PostgresConnection) throws -> CommitOutcome {
        let key = request.key
        let single = request.events.isEmpty && request.effects.isEmpty
        // The common case, a state change alone, is one statement: one round trip, no explicit transaction.
        if !single { _ = try db.execute("BEGIN") }
        let outcome: CommitOutcome
        switch request.change {
        case .replace(let state) where request.seenVersion == 0:
            let result = try db.execute(
                """
                INSERT INTO entities (function, entity_id, state, version, updated_at)
                VALUES ($1, $2, $3::jsonb, 1, now()) ON CONFLICT (function, entity_id) DO NOTHING
                """, [key.function, key.entity, state])
            outcome = result.affectedRows == 1 ? .committed(version: 1) : .conflict
        case .replace(let state):
            let result = try db.execute(
                """
                UPDATE entities SET state = $3::jsonb, version = version + 1, updated_at = now()
                WHERE function = $1 AND entity_id = $2 AND version = $4
                """, [key.function, key.entity, state, String(request.seenVersion)])
            outcome = result.affectedRows == 1 ? .committed(version: request.seenVersion + 1) : .conflict
        case .delete:
            let result = try db.execute(
                "DELETE FROM entities WHERE function = $1 AND entity_id = $2 AND version = $3",
                [key.function, key.entity, String(request.seenVersion)])
            outcome = result.affectedRows == 1 || request.seenVersion == 0 ? .committed(version: 0) : .conflict
        case .unchanged:
            // Events or effects without a state change still need the version to hold: bump nothing, but
            // lock the row and check it.
            let result = try db.execute(
                "SELECT version FROM entities WHERE function = $1 AND entity_id = $2 FOR UPDATE",
                [key.function, key.entity])
            let current = result.rows.first?[0].flatMap { Int64($0) } ?? 0
            outcome = current == request.seenVersion ? .committed(version: current) : .conflict
        }
        guard case .committed = outcome else {
            if !single { _ = try db.execute("ROLLBACK") }
            return outcome
        }
        for event in request.events {
            _ = try db.execute(
                """
                INSERT INTO entity_events (function, entity_id, seq, event, principal)
                SELECT $1, $2, coalesce(max(seq), 0) + 1, $3::jsonb, $4::jsonb
                FROM entity_events WHERE function = $1 AND entity_id = $2
                """, [key.function, key.entity, event, request.principal])
        }
        for effect in request.effects {
            _ = try db.execute(
                """
                INSERT INTO outbox (function, entity_id, command, payload, not_before, source_function, source_entity)
                VALUES ($1, $2, $3, $4::jsonb, now() + $5::bigint * INTERVAL '1 millisecond', $6, $7)
                """,
                [effect.function, effect.entity, effect.command, effect.payload, String(effect.delayMs),
                 key.function, key.entity])
        }
        if !single { _ = try db.execute("COMMIT") }
        return outcome
    }
}
