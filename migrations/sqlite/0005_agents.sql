-- Agents on the colocated servers, their inventories, and restores to them. Keep in step
-- with migrations/postgres/0005_agents.sql.
--
-- An agent row is created with its one-time enrolment token (only a keyed hash is kept)
-- and becomes `enrolled` when the token is exchanged for the agent's credential (again
-- only a hash). The enrolment hash stays, so a second use is recognised and refused.
CREATE TABLE agents (
    id                     INTEGER PRIMARY KEY,
    agency_id              INTEGER NOT NULL REFERENCES agencies (id),
    server_id              INTEGER REFERENCES servers (id),
    -- An agent enrolled at the handover (procedure A step 7), before its server is in
    -- the register: the colocation request and the declared server's name. Its server
    -- is filled in when step 7 registers it.
    request_id             INTEGER REFERENCES requests (id),
    declared_name          TEXT,
    enrollment_hash        TEXT    NOT NULL UNIQUE,
    enrollment_expires_at  TEXT    NOT NULL,
    credential_hash        TEXT    UNIQUE,
    hostname               TEXT,
    version                TEXT,
    created_at             TEXT    NOT NULL,
    created_by             TEXT    NOT NULL,
    enrolled_at            TEXT,
    revoked_at             TEXT,
    last_seen_at           TEXT
);
CREATE INDEX agents_server ON agents (server_id);

-- Every inventory an agent reported, with the differences found against the register.
CREATE TABLE agent_inventories (
    id               INTEGER PRIMARY KEY,
    server_id        INTEGER REFERENCES servers (id),
    agent_id         INTEGER NOT NULL REFERENCES agents (id),
    reported_at      TEXT    NOT NULL,
    inventory_json   TEXT    NOT NULL,
    mismatches_json  TEXT    NOT NULL
);
CREATE INDEX agent_inventories_server ON agent_inventories (server_id, reported_at);

-- Restores of a server's snapshot to an agent. Claimed like runs, by the daemon holding
-- the target agent's stream.
CREATE TABLE restores (
    id                INTEGER PRIMARY KEY,
    agency_id         INTEGER NOT NULL REFERENCES agencies (id),
    server_id         INTEGER NOT NULL REFERENCES servers (id),
    target_server_id  INTEGER NOT NULL REFERENCES servers (id),
    snapshot          TEXT    NOT NULL,
    paths_json        TEXT    NOT NULL,
    target_dir        TEXT    NOT NULL,
    status            TEXT    NOT NULL
        CHECK (status IN ('queued', 'running', 'ok', 'verify_differences', 'failed', 'cancelled')),
    request_id        INTEGER REFERENCES requests (id),
    requested_by      TEXT    NOT NULL,
    queued_at         TEXT    NOT NULL,
    started_at        TEXT,
    finished_at       TEXT,
    lease_owner       TEXT,
    lease_expires_at  TEXT,
    attempts          INTEGER NOT NULL DEFAULT 0,
    stats_json        TEXT,
    error             TEXT
);
CREATE INDEX restores_queue ON restores (status, queued_at);
