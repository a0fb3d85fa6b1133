-- Idempotency records as DESIGN.md section 4 describes them: scoped to the caller's subject as well as the entity,
-- with the answer's ETag, and swept by expiry. 0001's table was never written to, so it is replaced whole.
-- Only SQL that PostgreSQL 15 and CockroachDB both accept.

DROP TABLE IF EXISTS idempotency;

CREATE TABLE idempotency (
    caller       text        NOT NULL,
    function     text        NOT NULL,
    entity_id    text        NOT NULL,
    key          text        NOT NULL,
    request_hash text        NOT NULL,
    status       bigint      NOT NULL,
    response     text        NOT NULL,
    etag         text,
    expires_at   timestamptz NOT NULL,
    PRIMARY KEY (caller, function, entity_id, key)
);
CREATE INDEX IF NOT EXISTS idempotency_expiry ON idempotency (expires_at);
