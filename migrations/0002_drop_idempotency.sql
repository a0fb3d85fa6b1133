-- Idempotency records as DESIGN.md section 4 describes them: scoped to the caller's subject as well as the entity,
-- with the answer's ETag, and swept by expiry. 0001's table was never written to, so it is replaced whole: dropped
-- here, created again in 0003. (CockroachDB refuses a DROP and a CREATE of one table name in one transaction, and
-- each migration is one transaction.) Only SQL that PostgreSQL 15 and CockroachDB both accept.

DROP TABLE IF EXISTS idempotency;
