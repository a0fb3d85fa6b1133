-- Every commit changes updated_at, so while the TTL sweeper's index covered it (entities_updated), no update of an
-- entity could be a HOT update: each one wrote the primary key's index and that one again, and the table and both
-- indexes bloated under steady writes. touched_at is what the sweeper indexes instead: the time of the entity's
-- first write in its current minute. A commit sets it to now() only when it is older than a minute, so most
-- commits leave every indexed column as it was (PostgreSQL then updates in place, on the same page), and
-- CockroachDB writes the index about once a minute per busy entity instead of on every commit.
--
-- touched_at is never later than updated_at, and at most a minute earlier. Rows written before this migration have
-- none (NULL) until their next commit; the sweeper takes those as candidates too, and checks updated_at on each.
--
-- The index on it is the next migration's: CockroachDB advises one schema change per transaction, and an index on a
-- column added in the same transaction is where its limits lie.

ALTER TABLE entities ADD COLUMN IF NOT EXISTS touched_at timestamptz;
