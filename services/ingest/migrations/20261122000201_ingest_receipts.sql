-- What ingest has accepted, so a resubmission is recognised: the same referral again
-- is answered without a new event; the same identifier with other content is a
-- conflict. No clinical content is kept here, only identity and a content hash.
CREATE TABLE ingest_receipts (
    referral_id UUID PRIMARY KEY,
    source TEXT NOT NULL,
    identifier_system TEXT NOT NULL,
    identifier_value TEXT NOT NULL,
    content_hash TEXT NOT NULL,
    -- pending: being published now (or abandoned by a crash; see received_at);
    -- published: ReferralReceived is on the log.
    state TEXT NOT NULL CHECK (state IN ('pending', 'published')),
    received_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    published_at TIMESTAMPTZ,
    -- Set when the referrer withdrew the referral (BaRS update, revoked).
    cancelled_at TIMESTAMPTZ
);

-- Call-log events already published, so importing a file again adds nothing.
CREATE TABLE ingest_call_log_events (
    event_id UUID PRIMARY KEY,
    published_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
