-- The projector's read models, built only from `referral.events`. Disposable: a replay
-- rebuilds them from offset 0 into a fresh schema and swaps it in. Table names are
-- unqualified; the projector runs this with search_path set to the target schema.
-- Every value derives from the events (no processing times), so a rebuild is equal,
-- row for row, to the live projection.

-- One row per referral: its current state.
CREATE TABLE referrals (
    referral_id UUID PRIMARY KEY,
    source TEXT NOT NULL,
    source_identifier_system TEXT NOT NULL,
    source_identifier_value TEXT NOT NULL,
    content_hash TEXT NOT NULL,
    status TEXT NOT NULL,
    provider_id TEXT,
    attempt INTEGER NOT NULL,
    accept_by TIMESTAMPTZ,
    tried_providers TEXT[] NOT NULL,
    consent_to_evaluation BOOLEAN NOT NULL,
    first_contact_at TIMESTAMPTZ,
    contacts INTEGER NOT NULL,
    activities INTEGER NOT NULL,
    observation_ids UUID[] NOT NULL,
    version BIGINT NOT NULL,
    nhs_number TEXT,
    birth_date DATE,
    postcode TEXT,
    needs TEXT[] NOT NULL,
    priority TEXT NOT NULL,
    requester TEXT,
    asc_case_id TEXT,
    authored_on TIMESTAMPTZ NOT NULL,
    received_at TIMESTAMPTZ NOT NULL,
    last_updated TIMESTAMPTZ NOT NULL,
    closed_at TIMESTAMPTZ,
    service_request JSONB NOT NULL,
    patient JSONB,
    -- The person's national data opt-out, as the referral said.
    national_data_opt_out BOOLEAN NOT NULL,
    -- The person withdrew consent to share for evaluation (and has not given it again):
    -- an objection that no lawful basis overrides.
    evaluation_objection BOOLEAN NOT NULL,
    -- A per-submission self-referral identity (self:<id>) that sent it, which alone of
    -- the self identities reads it back.
    submitted_by TEXT
)
-- A row of a few kB is stored as written: Postgres would otherwise compress any row over
-- about 2 kB on insert (pglz, most of the database's time under projection load).
WITH (toast_tuple_target = 8160);
CREATE INDEX referrals_nhs_number ON referrals (nhs_number) WHERE nhs_number IS NOT NULL;
CREATE INDEX referrals_provider_status ON referrals (provider_id, status);
CREATE INDEX referrals_source ON referrals (source);

-- Every event applied to a referral: one version per event.
CREATE TABLE history (
    referral_id UUID NOT NULL,
    version BIGINT NOT NULL,
    event_id UUID NOT NULL UNIQUE,
    event_type TEXT NOT NULL,
    occurred_at TIMESTAMPTZ NOT NULL,
    status TEXT NOT NULL,
    provider_id TEXT,
    -- The event's body; null for a receipt, whose ServiceRequest is in `referrals`.
    body JSONB,
    PRIMARY KEY (referral_id, version)
);

-- Events on the log that lost to an earlier one (log order decides: an acceptance
-- after a re-routing, a second closing status). Kept for audit; they change nothing.
CREATE TABLE superseded (
    event_id UUID PRIMARY KEY,
    referral_id UUID NOT NULL,
    event_type TEXT NOT NULL,
    occurred_at TIMESTAMPTZ NOT NULL,
    reason TEXT NOT NULL
);
CREATE INDEX superseded_referral ON superseded (referral_id);

-- One row per routing attempt: the Task a provider works on.
CREATE TABLE tasks (
    task_id UUID PRIMARY KEY,
    referral_id UUID NOT NULL,
    attempt INTEGER NOT NULL,
    provider_id TEXT NOT NULL,
    status TEXT NOT NULL,
    status_reason TEXT,
    authored_on TIMESTAMPTZ NOT NULL,
    last_modified TIMESTAMPTZ NOT NULL,
    accept_by TIMESTAMPTZ,
    version BIGINT NOT NULL,
    UNIQUE (referral_id, attempt)
);
CREATE INDEX tasks_provider_status ON tasks (provider_id, status);

-- Referrals per provider and status (the provider's caseload).
CREATE TABLE caseload (
    provider_id TEXT NOT NULL,
    status TEXT NOT NULL,
    referrals BIGINT NOT NULL,
    PRIMARY KEY (provider_id, status)
);

-- Outcome measures, one per Observation.
CREATE TABLE observations (
    observation_id UUID PRIMARY KEY,
    referral_id UUID NOT NULL,
    provider_id TEXT NOT NULL,
    instrument TEXT NOT NULL,
    timepoint TEXT NOT NULL,
    measure JSONB NOT NULL,
    total SMALLINT,
    effective_at TIMESTAMPTZ NOT NULL,
    recorded_at TIMESTAMPTZ NOT NULL,
    version BIGINT NOT NULL
);
CREATE INDEX observations_referral ON observations (referral_id, effective_at);

-- Baseline and follow-up per referral and instrument: the earliest baseline and the
-- latest follow-up.
CREATE VIEW outcome_pairs AS
SELECT referral_id, instrument,
       (array_agg(observation_id ORDER BY effective_at, observation_id) FILTER (WHERE timepoint = 'baseline'))[1] AS baseline_observation,
       (array_agg(total ORDER BY effective_at, observation_id) FILTER (WHERE timepoint = 'baseline'))[1] AS baseline_total,
       (array_agg(observation_id ORDER BY effective_at DESC, observation_id) FILTER (WHERE timepoint = 'follow-up'))[1] AS follow_up_observation,
       (array_agg(total ORDER BY effective_at DESC, observation_id) FILTER (WHERE timepoint = 'follow-up'))[1] AS follow_up_total
FROM observations
GROUP BY referral_id, instrument;

-- Contacts with the person and activities attended.
CREATE TABLE contacts (
    event_id UUID PRIMARY KEY,
    referral_id UUID NOT NULL,
    provider_id TEXT NOT NULL,
    contact_at TIMESTAMPTZ NOT NULL,
    mode TEXT NOT NULL
);
CREATE INDEX contacts_referral ON contacts (referral_id);

CREATE TABLE activities (
    event_id UUID PRIMARY KEY,
    referral_id UUID NOT NULL,
    provider_id TEXT NOT NULL,
    activity_id TEXT,
    activity_name TEXT NOT NULL,
    kind TEXT NOT NULL,
    attended_on DATE NOT NULL
);
CREATE INDEX activities_referral ON activities (referral_id);
