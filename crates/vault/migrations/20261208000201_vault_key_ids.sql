-- What is sealed names its key by a random id, not by the person: a keyed hash of an
-- NHS number can be reversed by whoever holds the vault secret (there are only about
-- 10^9 NHS numbers), so it must not outlive an erasure, on the log or here.
ALTER TABLE vault_person_keys ADD COLUMN key_id UUID NOT NULL DEFAULT gen_random_uuid();
CREATE UNIQUE INDEX vault_person_keys_key_id ON vault_person_keys (key_id);

-- An erasure is recorded without the person: when, by whom, how many referrals.
ALTER TABLE vault_erasures DROP COLUMN person;
ALTER TABLE vault_erasures ADD COLUMN erasure_id UUID PRIMARY KEY DEFAULT gen_random_uuid();
ALTER TABLE vault_erasures ADD COLUMN referrals INTEGER NOT NULL DEFAULT 0;
