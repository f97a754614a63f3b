-- The outbox holds only what waits to be published. Its rows are wide (a FHIR Bundle
-- is several kB), and the relay used to rewrite each one twice (the attempt recorded,
-- then published marked) before it left, each rewrite a new copy of the row in the
-- table and the WAL. Now an attempt is a narrow row of its own, and publishing deletes
-- the outbox row and keeps a narrow record of where the message landed: that record is
-- what stops a message with the same event id being written and published again, and
-- what an auditor reads, until it is pruned.

-- Set before the first publish attempt: the partition the row goes to and an offset at
-- or below where it will land. After a crash between publish and mark, the relay reads
-- the partition from scan_from to find rows already published.
CREATE TABLE outbox_attempts (
    id BIGINT PRIMARY KEY,
    target_partition INTEGER NOT NULL,
    scan_from BIGINT NOT NULL,
    attempted_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- Published messages: where each landed. Pruned after the relay's keep_published.
CREATE TABLE outbox_published (
    event_id UUID PRIMARY KEY,
    topic TEXT NOT NULL,
    ce_type TEXT NOT NULL,
    published_partition INTEGER,
    published_offset BIGINT,
    published_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX outbox_published_published_at ON outbox_published USING BRIN (published_at);

INSERT INTO outbox_attempts (id, target_partition, scan_from, attempted_at)
SELECT id, target_partition, scan_from, coalesce(attempted_at, now())
FROM outbox
WHERE published_at IS NULL AND target_partition IS NOT NULL AND scan_from IS NOT NULL;

INSERT INTO outbox_published
    (event_id, topic, ce_type, published_partition, published_offset, published_at)
SELECT event_id, topic, ce_type, target_partition, published_offset, published_at
FROM outbox
WHERE published_at IS NOT NULL;

DELETE FROM outbox WHERE published_at IS NOT NULL;

DROP INDEX outbox_unpublished;
DROP INDEX outbox_published_at;
ALTER TABLE outbox
    DROP COLUMN target_partition,
    DROP COLUMN scan_from,
    DROP COLUMN attempted_at,
    DROP COLUMN published_at,
    DROP COLUMN published_offset;
