-- The idempotency records' table (see 0002, which dropped 0001's): one row per (caller, function, entity, key),
-- written in the same transaction as the commit it answers for. Only SQL that PostgreSQL 15 and CockroachDB accept.

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
