-- The ASC call log as linkwork knows it: one row per case, rebuilt from asc.call-log.
CREATE TABLE asc_cases (
    case_id TEXT PRIMARY KEY,
    opened_at TIMESTAMPTZ,
    closed_at TIMESTAMPTZ,
    closure_reason TEXT CHECK (
        closure_reason IN ('diverted-to-community', 'resolved', 'assessed', 'referred-elsewhere', 'withdrawn')
    ),
    diverted_at TIMESTAMPTZ,
    referral_id UUID,
    updated_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX asc_cases_opened_at ON asc_cases (opened_at);
CREATE INDEX asc_cases_closed_at ON asc_cases (closed_at);
