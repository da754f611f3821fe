-- Bearer tokens of the control plane. Keep in step with migrations/postgres/0002_tokens.sql.
-- Only a keyed BLAKE3 hash of each token is stored: a copy of the catalog does not let
-- anyone call the daemon.
CREATE TABLE api_tokens (
    id           INTEGER PRIMARY KEY,
    account_id   INTEGER NOT NULL REFERENCES accounts (id),
    token_hash   TEXT    NOT NULL UNIQUE,
    label        TEXT    NOT NULL,
    created_at   TEXT    NOT NULL,
    created_by   TEXT    NOT NULL,
    expires_at   TEXT,
    revoked_at   TEXT,
    last_used_at TEXT
);

CREATE INDEX api_tokens_account ON api_tokens (account_id);
