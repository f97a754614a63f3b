-- The person a case is about (the call log's optional person_id), so a diverted
-- person's return to ASC within 90 days can be counted.
ALTER TABLE asc_cases ADD COLUMN person_id TEXT;
CREATE INDEX asc_cases_person ON asc_cases (person_id, opened_at) WHERE person_id IS NOT NULL;
CREATE INDEX asc_cases_diverted_at ON asc_cases (diverted_at) WHERE diverted_at IS NOT NULL;

-- Daily call-log records published on metrics.call-log, one per day, exactly once.
CREATE TABLE metrics_call_log_days (
    day DATE PRIMARY KEY,
    open_cases BIGINT NOT NULL,
    published_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
