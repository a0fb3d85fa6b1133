-- statefn's first schema. Only SQL that PostgreSQL 15 and CockroachDB both accept: no SERIAL or sequences, no
-- triggers, no stored procedures, no extensions.

CREATE TABLE IF NOT EXISTS entities (
    function    text        NOT NULL,
    entity_id   text        NOT NULL,
    state       jsonb       NOT NULL,
    version     bigint      NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (function, entity_id)
);

CREATE TABLE IF NOT EXISTS entity_events (
    function    text        NOT NULL,
    entity_id   text        NOT NULL,
    seq         bigint      NOT NULL,
    event       jsonb       NOT NULL,
    principal   jsonb,
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (function, entity_id, seq)
);

-- Effects and timers, written in the same transaction as the state that caused them.
CREATE TABLE IF NOT EXISTS outbox (
    id              uuid        NOT NULL DEFAULT gen_random_uuid() PRIMARY KEY,
    function        text        NOT NULL,
    entity_id       text,
    command         text        NOT NULL,
    payload         jsonb,
    source_function text        NOT NULL,
    source_entity   text        NOT NULL,
    not_before      timestamptz NOT NULL DEFAULT now(),
    attempts        bigint      NOT NULL DEFAULT 0,
    claimed_until   timestamptz,
    last_error      text,
    created_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS outbox_due ON outbox (not_before);

CREATE TABLE IF NOT EXISTS idempotency (
    function     text        NOT NULL,
    entity_id    text        NOT NULL,
    key          text        NOT NULL,
    request_hash text        NOT NULL,
    status       bigint      NOT NULL,
    response     bytea,
    expires_at   timestamptz NOT NULL,
    PRIMARY KEY (function, entity_id, key)
);

CREATE TABLE IF NOT EXISTS api_keys (
    id          text        NOT NULL PRIMARY KEY,
    secret_hash bytea       NOT NULL,
    name        text        NOT NULL,
    scopes      jsonb       NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    expires_at  timestamptz,
    revoked_at  timestamptz
);
