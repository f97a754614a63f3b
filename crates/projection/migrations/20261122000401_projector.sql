-- The projector's read models live in their own schema (`projection`), created from
-- services/projector/sql/read_models.sql at start-up; replay builds a fresh copy in
-- another schema and swaps it in. What lives here must survive a swap.

-- Provider commands accepted over HTTP and already on the log, but not yet applied by
-- the projector: the command side folds them over the projection so a provider's next
-- update is judged on what it has already been told succeeded. The projector deletes
-- each row when it applies (or supersedes) the event.
CREATE TABLE pending_provider_events (
    seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    event_id UUID NOT NULL UNIQUE,
    referral_id UUID NOT NULL,
    event_type TEXT NOT NULL,
    body BYTEA NOT NULL,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX pending_provider_events_referral ON pending_provider_events (referral_id, seq);

-- Which version of read_models.sql built the live schema, and when it was (re)built.
CREATE TABLE projection_meta (
    singleton BOOLEAN PRIMARY KEY DEFAULT TRUE CHECK (singleton),
    ddl_hash TEXT NOT NULL,
    built_at TIMESTAMPTZ NOT NULL
);
