-- The audit trail's index, ingest's own: every AuditEvent on audit.events (written by
-- ingest's audit consumer alone), for GET /fhir/AuditEvent. linkwork never updates or
-- deletes a row. People are named by linkwork's Patient id of a referral, never by an
-- identifier.
CREATE TABLE audit_events (
    event_id UUID PRIMARY KEY,
    recorded TIMESTAMPTZ NOT NULL,
    patients UUID[] NOT NULL,
    client TEXT,
    resource JSONB NOT NULL
);
CREATE INDEX audit_events_recorded ON audit_events (recorded);
CREATE INDEX audit_events_patients ON audit_events USING gin (patients);
