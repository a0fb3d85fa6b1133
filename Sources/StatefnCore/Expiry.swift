// Time to live (DESIGN.md section 3's `state_ttl_ms` and `events_ttl_ms`): a sweeper in every replica expires
// entities untouched that long, and events older than that, in small batches, with no table locks and no long
// transactions. Two replicas sweeping at once only share the work.
import Logging
import StatefnPostgres
import StatefnWorkers

/// Runs `batch` (which removes up to `size` rows and says how many) until one comes back short or the task is
/// cancelled, and returns the total: how every sweeper works, in small transactions.
func sweepInBatches(of size: Int = 500, _ batch: (Int) async throws -> Int) async throws -> Int {
    var total = 0
    while !Task.isCancelled {
        let count = try await batch(size)
        total += count
        if count < size { break }
    }
    return total
}

struct ExpiryStore: Sendable {
    let pool: PostgresPool

    /// Expires up to `limit` of `function`'s entities untouched for `ttlMs`: each becomes a tombstone (state null,
    /// version + 1), like a delete, so a version is never reused. Returns how many. The age is checked again on the
    /// row itself, not only in the subquery: a commit that lands on a chosen row while the sweep waits for its lock
    /// makes it young again (PostgreSQL re-checks the outer condition on the new row version), and it stays.
    /// Candidates are found by `touched_at` (indexed, never later than `updated_at`; NULL on rows no commit has
    /// touched since migration 0006) and kept by `updated_at`.
    func expireStates(of function: String, ttlMs: Int, limit: Int) async throws -> Int {
        try await pool.execute(
            """
            UPDATE entities SET state = 'null'::jsonb, version = version + 1, updated_at = now(), touched_at = now()
            WHERE function = $1 AND updated_at < now() - $2::bigint * INTERVAL '1 millisecond'
                AND state <> 'null'::jsonb AND entity_id IN (
                SELECT entity_id FROM entities
                WHERE function = $1
                    AND (touched_at < now() - $2::bigint * INTERVAL '1 millisecond' OR touched_at IS NULL)
                    AND updated_at < now() - $2::bigint * INTERVAL '1 millisecond' AND state <> 'null'::jsonb
                LIMIT $3::bigint)
            """, [function, String(ttlMs), String(limit)]
        ).affectedRows
    }

    /// Deletes up to `limit` of `function`'s events older than `ttlMs`, except each entity's newest, which keeps
    /// the next event's seq going up (a subscriber's Last-Event-ID never comes round again). Returns how many.
    func expireEvents(of function: String, ttlMs: Int, limit: Int) async throws -> Int {
        try await pool.execute(
            """
            DELETE FROM entity_events WHERE function = $1 AND (entity_id, seq) IN (
                SELECT e.entity_id, e.seq FROM entity_events AS e
                WHERE e.function = $1 AND e.created_at < now() - $2::bigint * INTERVAL '1 millisecond'
                    AND e.seq < (SELECT max(m.seq) FROM entity_events AS m
                                 WHERE m.function = e.function AND m.entity_id = e.entity_id)
                LIMIT $3::bigint)
            """, [function, String(ttlMs), String(limit)]
        ).affectedRows
    }

    /// One pass over the functions with a TTL.
    func sweep(_ manifests: [String: FunctionManifest], logger: Logger) async {
        for (function, manifest) in manifests.sorted(by: { $0.key < $1.key }) where !Task.isCancelled {
            do {
                if manifest.stateTTLMs > 0 {
                    let expired = try await sweepInBatches {
                        try await expireStates(of: function, ttlMs: manifest.stateTTLMs, limit: $0)
                    }
                    // Cached copies elsewhere go stale as after any other writer: their next commit loses its
                    // compare-and-set and reloads.
                    if expired > 0 {
                        logger.info("entities expired", metadata: ["function": "\(function)", "count": "\(expired)"])
                    }
                }
                if manifest.eventsTTLMs > 0 {
                    _ = try await sweepInBatches {
                        try await expireEvents(of: function, ttlMs: manifest.eventsTTLMs, limit: $0)
                    }
                }
            } catch {
                logger.warning("expiry sweep failed", metadata: ["function": "\(function)", "error": "\(error)"])
            }
        }
    }
}
