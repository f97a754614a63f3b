-- A failed delivery does not mean the event is absent: librdkafka reports a request
-- that reached the broker but went unanswered (a timeout, a broker killed mid-request)
-- as failed. Such a claim is kept as 'unconfirmed' until the log is read to settle it,
-- and nothing else is published for the referral meanwhile.
ALTER TABLE ingest_receipts DROP CONSTRAINT ingest_receipts_state_check;
ALTER TABLE ingest_receipts ADD CONSTRAINT ingest_receipts_state_check
    CHECK (state IN ('pending', 'unconfirmed', 'published'));

-- When the latest attempt to publish began: until it is older than the producer's
-- message timeout (with a margin), that attempt may still land on the log.
ALTER TABLE ingest_receipts ADD COLUMN attempted_at TIMESTAMPTZ;
UPDATE ingest_receipts SET attempted_at = received_at;
ALTER TABLE ingest_receipts
    ALTER COLUMN attempted_at SET NOT NULL,
    ALTER COLUMN attempted_at SET DEFAULT now();
