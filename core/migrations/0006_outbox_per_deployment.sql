-- Each deployment relays only its own events. Servers that share a database but not a
-- topic prefix (KAFKA_TOPIC_PREFIX: a second environment, a test run, a developer's
-- experiment) each took the one relay lock, and the winner published everyone's events
-- to its own topics, where the other deployment's consumers never saw them. Rows are now
-- tagged with their writer's prefix, and each prefix has its own relay (server/outbox.py).
-- Rows written before this migration belong to the unprefixed deployment.
ALTER TABLE outbox ADD COLUMN topic_prefix text NOT NULL DEFAULT '';
DROP INDEX outbox_unsent;
CREATE INDEX outbox_unsent ON outbox (topic_prefix, id) WHERE sent_at IS NULL;
