-- Dead letters: an outbox row that failed for good keeps its place, marked dead, until an operator retries it
-- (POST /v1/outbox/{id}/retry). Alone in its migration: CockroachDB cannot index a column in the transaction that
-- adds it (0005 does).

ALTER TABLE outbox ADD COLUMN IF NOT EXISTS dead_at timestamptz;
