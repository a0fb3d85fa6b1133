-- The dispatcher's one query per interval reads pending rows by due time; dead rows stay out of its index. The
-- TTL sweepers find old entities and events per function without scanning the tables.

DROP INDEX IF EXISTS outbox_due;
CREATE INDEX IF NOT EXISTS outbox_pending ON outbox (not_before) WHERE dead_at IS NULL;
CREATE INDEX IF NOT EXISTS outbox_dead ON outbox (created_at) WHERE dead_at IS NOT NULL;
CREATE INDEX IF NOT EXISTS entities_updated ON entities (function, updated_at);
CREATE INDEX IF NOT EXISTS entity_events_created ON entity_events (function, created_at);
