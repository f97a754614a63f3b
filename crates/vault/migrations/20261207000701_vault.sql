-- Per-person data keys for crypto-shredding (linkwork-vault's own table). A person is
-- named by a keyed hash (never an identifier); the key is stored wrapped under the
-- deployment's vault key (LINKWORK_VAULT_KEY), so a copy of the database alone opens
-- nothing. Erasure deletes the row: whatever was sealed under it is unreadable for good.
CREATE TABLE vault_person_keys (
    person BYTEA PRIMARY KEY,
    wrapped_key BYTEA NOT NULL,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- That a person was erased, and when: no identifier, only the keyed hash, so a key is
-- never made again for them by mistake and the erasure can be shown to an auditor.
CREATE TABLE vault_erasures (
    person BYTEA PRIMARY KEY,
    erased_at TIMESTAMPTZ NOT NULL,
    erased_by TEXT NOT NULL
);
