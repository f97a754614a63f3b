-- Whose each sealed referral is (linkwork-vault's own table): the person as the keyed
-- hash the vault names them by, never an identifier. An erasure reads it to name the
-- referrals it redacts; it keeps no data about the person.
CREATE TABLE vault_referrals (
    referral_id UUID PRIMARY KEY,
    person BYTEA NOT NULL
);

CREATE INDEX vault_referrals_person ON vault_referrals (person);
