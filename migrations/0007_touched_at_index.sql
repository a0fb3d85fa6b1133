-- The TTL sweeper's index moves from updated_at, which every commit changes, to touched_at (migration 0006), which a
-- commit changes about once a minute: most commits then leave every indexed column as it was.

CREATE INDEX IF NOT EXISTS entities_touched ON entities (function, touched_at);
DROP INDEX IF EXISTS entities_updated;
