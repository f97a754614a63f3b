-- The received body (a ReferralReceived of a few kB) is kept only while the referral may
-- need routing again, and each row is rewritten as the referral moves: store it as
-- written rather than compress it on every insert and update (see the store's
-- outbox_uncompressed). Rows over a page are still compressed.
ALTER TABLE router_referrals SET (toast_tuple_target = 8160);
