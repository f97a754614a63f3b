-- The router now counts a triage decision as back on the log when confirmed_attempt is
-- attempt + 1 (a ReferralUnroutable read back), so that an acceptance which reached
-- the log before the decision still stands. Rows whose decision was read back under
-- the old rule (confirmed_attempt = attempt) are brought up to the new one.
UPDATE router_referrals SET confirmed_attempt = attempt + 1
WHERE status = 'unroutable' AND confirmed_attempt = attempt;
