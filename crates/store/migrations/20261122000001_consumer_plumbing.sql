-- Consumer plumbing shared by every service: stored offsets, event de-duplication
-- and the transactional outbox (DESIGN.md principle 3).

-- The next offset each consumer will read, per partition. Written in the same
-- transaction as the consumer's state; the conditional update on next_offset fences
-- out a consumer that lost its partition in a rebalance.
CREATE TABLE consumer_offsets (
    consumer TEXT NOT NULL,
    topic TEXT NOT NULL,
    partition INTEGER NOT NULL CHECK (partition >= 0),
    next_offset BIGINT NOT NULL CHECK (next_offset >= 0),
    updated_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer, topic, partition)
);

-- Event ids each consumer has applied. A copy of an event (a producer retry, an
-- outbox relay restarted between publish and mark) finds its id here and is skipped.
CREATE TABLE processed_events (
    consumer TEXT NOT NULL,
    event_id UUID NOT NULL,
    processed_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer, event_id)
);
-- Pruning removes old ids by time; BRIN suits an append-mostly timestamp.
CREATE INDEX processed_events_processed_at ON processed_events USING BRIN (processed_at);

-- Messages to publish, written in the transaction that decided them: events for
-- other topics and dead letters alike.
CREATE TABLE outbox (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    event_id UUID NOT NULL UNIQUE,
    topic TEXT NOT NULL,
    message_key TEXT,
    ce_type TEXT NOT NULL,
    ce_source TEXT NOT NULL,
    ce_time TIMESTAMPTZ NOT NULL,
    traceparent TEXT,
    tracestate TEXT,
    -- Further headers as a JSON array of [name, value] pairs (dead letters carry the
    -- reason and the original message's coordinates and headers here).
    extra_headers JSONB,
    payload BYTEA NOT NULL,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    -- Set before the first publish attempt: the partition the row goes to and an
    -- offset at or below where it will land. After a crash between publish and mark,
    -- the relay reads the partition from scan_from to find rows already published.
    target_partition INTEGER,
    scan_from BIGINT,
    attempted_at TIMESTAMPTZ,
    published_at TIMESTAMPTZ,
    published_offset BIGINT
);
CREATE INDEX outbox_unpublished ON outbox (id) WHERE published_at IS NULL;
CREATE INDEX outbox_published_at ON outbox USING BRIN (published_at);
