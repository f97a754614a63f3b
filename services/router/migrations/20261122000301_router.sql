-- The router's own state: the provider directory's versions, each provider's active
-- caseload, and where each referral stands in routing.

CREATE TABLE directory_versions (
    version      BIGSERIAL PRIMARY KEY,
    content_hash TEXT NOT NULL,
    document     JSONB NOT NULL,
    note         TEXT NOT NULL DEFAULT '',
    created_at   TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- Active caseload: referrals requested from the provider or with it (accepted, in
-- progress, on hold). Capacity itself lives in the directory. Router transactions
-- lock these rows (in provider id order) before deciding, so instances in one
-- consumer group never oversubscribe a provider.
CREATE TABLE provider_load (
    provider_id TEXT PRIMARY KEY,
    active      INTEGER NOT NULL DEFAULT 0 CHECK (active >= 0),
    updated_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- One row per referral the router has seen.
-- status: requested (on a provider's queue, deadline running), accepted (with the
-- provider), unroutable (in triage), closed (completed, failed, cancelled, in error).
-- received: the ReferralReceived event body, kept only while the referral may still
-- need routing (identifiable data is dropped once a provider accepts or it closes).
CREATE TABLE router_referrals (
    referral_id       UUID PRIMARY KEY,
    status            TEXT NOT NULL CHECK (status IN ('requested', 'accepted', 'unroutable', 'closed')),
    provider_id       TEXT,
    attempt           INTEGER NOT NULL,
    confirmed_attempt INTEGER NOT NULL DEFAULT 0,
    accept_by         TIMESTAMPTZ,
    tried             TEXT NOT NULL DEFAULT '',
    reserved          BOOLEAN NOT NULL DEFAULT false,
    directory_version TEXT NOT NULL,
    received          BYTEA,
    updated_at        TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE INDEX router_referrals_due ON router_referrals (accept_by) WHERE status = 'requested';
