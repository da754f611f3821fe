-- cadang catalog, SQLite flavour. Keep in step with migrations/postgres/0001_catalog.sql:
-- the same tables, columns and constraints; only the type names differ (INTEGER/BLOB here,
-- BIGINT/BYTEA/BOOLEAN there).
--
-- Conventions (shared by both backends, relied on by src/catalog):
-- * every integer is a 64-bit integer (INTEGER here, BIGINT in PostgreSQL);
-- * instants are TEXT in RFC 3339 UTC with microseconds (`2026-01-05T01:30:00.000000Z`), so
--   they sort as text and hash identically on both backends;
-- * dates are TEXT `YYYY-MM-DD`;
-- * JSON is TEXT (never JSONB: audit hashes are computed over the exact stored text).

-- Record #1 of the SOP: the government agencies (SKPD, regencies and cities) that colocate.
CREATE TABLE agencies (
    id          INTEGER PRIMARY KEY,
    code        TEXT    NOT NULL UNIQUE,
    name        TEXT    NOT NULL,
    kind        TEXT    NOT NULL CHECK (kind IN ('skpd', 'kabupaten', 'kota')),
    address     TEXT    NOT NULL,
    phone       TEXT,
    created_at  TEXT    NOT NULL
);

CREATE TABLE people (
    id          INTEGER PRIMARY KEY,
    name        TEXT    NOT NULL,
    nip         TEXT    NOT NULL UNIQUE,
    position    TEXT,
    agency_id   INTEGER REFERENCES agencies (id),
    phone       TEXT,
    created_at  TEXT    NOT NULL
);

CREATE TABLE accounts (
    id          INTEGER PRIMARY KEY,
    username    TEXT    NOT NULL UNIQUE,
    person_id   INTEGER REFERENCES people (id),
    agency_id   INTEGER REFERENCES agencies (id),
    active      BOOLEAN NOT NULL,
    created_at  TEXT    NOT NULL
);

CREATE TABLE account_roles (
    account_id  INTEGER NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
    role        TEXT    NOT NULL
        CHECK (role IN ('KADIN', 'KABID_TIK', 'KASI_INFRAS', 'PETUGAS', 'SKPD', 'ADMIN')),
    PRIMARY KEY (account_id, role)
);

-- Every procedure revision a request may run under, kept so that a request outlives the
-- file it was started from.
CREATE TABLE procedure_definitions (
    code            TEXT    NOT NULL,
    revision        INTEGER NOT NULL,
    source          TEXT    NOT NULL,
    definition_json TEXT    NOT NULL,
    content_hash    TEXT    NOT NULL,
    loaded_at       TEXT    NOT NULL,
    PRIMARY KEY (code, revision)
);

-- Capacity model.
CREATE TABLE power_feeds (
    id          INTEGER PRIMARY KEY,
    name        TEXT    NOT NULL UNIQUE,
    capacity_w  INTEGER NOT NULL CHECK (capacity_w > 0),
    created_at  TEXT    NOT NULL
);

CREATE TABLE racks (
    id              INTEGER PRIMARY KEY,
    name            TEXT    NOT NULL UNIQUE,
    noc             TEXT    NOT NULL,
    location        TEXT    NOT NULL,
    u_size          INTEGER NOT NULL CHECK (u_size > 0),
    power_budget_w  INTEGER NOT NULL CHECK (power_budget_w > 0),
    power_feed_id   INTEGER REFERENCES power_feeds (id),
    created_at      TEXT    NOT NULL
);

CREATE TABLE uplinks (
    id              INTEGER PRIMARY KEY,
    name            TEXT    NOT NULL UNIQUE,
    capacity_mbps   INTEGER NOT NULL CHECK (capacity_mbps > 0),
    created_at      TEXT    NOT NULL
);

-- Sealed secrets (AEAD ciphertext only; the plaintext never reaches the database).
CREATE TABLE secrets (
    id              INTEGER PRIMARY KEY,
    reference       TEXT    NOT NULL UNIQUE,
    purpose         TEXT    NOT NULL,
    sealed          BLOB    NOT NULL,
    key_fingerprint TEXT    NOT NULL,
    created_at      TEXT    NOT NULL
);

-- Requests and their step records. `state_json` (workflow::RequestState) is the truth;
-- status, current_step, outcome and step_records are projections for queries and reports.
CREATE TABLE requests (
    id                  INTEGER PRIMARY KEY,
    procedure           TEXT    NOT NULL,
    revision            INTEGER NOT NULL,
    sop_number          TEXT    NOT NULL,
    sop_revision_date   TEXT    NOT NULL,
    agency_id           INTEGER NOT NULL REFERENCES agencies (id),
    server_id           INTEGER REFERENCES servers (id),
    subject             TEXT    NOT NULL,
    details_json        TEXT    NOT NULL,
    state_json          TEXT    NOT NULL,
    status              TEXT    NOT NULL CHECK (status IN ('active', 'finished')),
    current_step        INTEGER,
    outcome             TEXT,
    version             INTEGER NOT NULL,
    opened_by           TEXT    NOT NULL,
    opened_at           TEXT    NOT NULL,
    updated_at          TEXT    NOT NULL,
    FOREIGN KEY (procedure, revision) REFERENCES procedure_definitions (code, revision)
);
CREATE INDEX requests_by_status ON requests (status, procedure);
CREATE INDEX requests_by_agency ON requests (agency_id);

CREATE TABLE step_records (
    request_id      INTEGER NOT NULL REFERENCES requests (id),
    visit           INTEGER NOT NULL,
    step            INTEGER NOT NULL,
    started_at      TEXT    NOT NULL,
    finished_at     TEXT,
    actor           TEXT,
    role            TEXT,
    decision        TEXT,
    reason          TEXT,
    note            TEXT,
    cancelled       BOOLEAN NOT NULL,
    documents_json  TEXT    NOT NULL,
    time_standard   TEXT    NOT NULL,
    PRIMARY KEY (request_id, visit)
);

-- Record #3 of the SOP: the asset register of servers owned by the agencies.
CREATE TABLE servers (
    id                      INTEGER PRIMARY KEY,
    agency_id               INTEGER NOT NULL REFERENCES agencies (id),
    request_id              INTEGER REFERENCES requests (id),
    name                    TEXT    NOT NULL,
    serial_number           TEXT    NOT NULL,
    server_type             TEXT    NOT NULL,
    brand                   TEXT    NOT NULL,
    processor               TEXT    NOT NULL,
    ram                     TEXT    NOT NULL,
    motherboard             TEXT    NOT NULL,
    storage                 TEXT    NOT NULL,
    psu                     TEXT    NOT NULL,
    ip_addresses_json       TEXT    NOT NULL,
    domain                  TEXT,
    domain_activated_on     TEXT,
    noc                     TEXT,
    rack_id                 INTEGER REFERENCES racks (id),
    u_position              INTEGER,
    u_size                  INTEGER NOT NULL CHECK (u_size >= 0),
    power_draw_w            INTEGER NOT NULL CHECK (power_draw_w >= 0),
    bandwidth_mbps          INTEGER NOT NULL CHECK (bandwidth_mbps >= 0),
    permanent               BOOLEAN NOT NULL,
    temporary_until         TEXT,
    status                  TEXT    NOT NULL CHECK (status IN ('active', 'withdrawn')),
    host_admin_user         TEXT,
    host_admin_secret_id    INTEGER REFERENCES secrets (id),
    contact                 TEXT,
    registered_at           TEXT    NOT NULL,
    updated_at              TEXT    NOT NULL,
    withdrawn_at            TEXT
);
-- A serial number names one machine in the room at a time; withdrawn entries keep theirs.
CREATE UNIQUE INDEX servers_active_serial ON servers (serial_number) WHERE status = 'active';
CREATE INDEX servers_by_agency ON servers (agency_id);

-- Capacity held by a request (reserved) or a server (active). A rack allocation has a
-- position; a bandwidth-only allocation has none.
CREATE TABLE allocations (
    id              INTEGER PRIMARY KEY,
    request_id      INTEGER REFERENCES requests (id),
    server_id       INTEGER REFERENCES servers (id),
    server_name     TEXT    NOT NULL,
    rack_id         INTEGER REFERENCES racks (id),
    u_start         INTEGER,
    u_count         INTEGER NOT NULL CHECK (u_count >= 0),
    power_w         INTEGER NOT NULL CHECK (power_w >= 0),
    uplink_id       INTEGER REFERENCES uplinks (id),
    bandwidth_mbps  INTEGER NOT NULL CHECK (bandwidth_mbps >= 0),
    status          TEXT    NOT NULL CHECK (status IN ('reserved', 'active', 'released')),
    created_at      TEXT    NOT NULL,
    released_at     TEXT,
    CHECK (request_id IS NOT NULL OR server_id IS NOT NULL),
    CHECK ((rack_id IS NULL) = (u_start IS NULL))
);
CREATE INDEX allocations_live ON allocations (status, rack_id);

CREATE TABLE capacity_checks (
    id          INTEGER PRIMARY KEY,
    request_id  INTEGER NOT NULL REFERENCES requests (id),
    computed_at TEXT    NOT NULL,
    report_json TEXT    NOT NULL
);

CREATE TABLE server_observations (
    id          INTEGER PRIMARY KEY,
    request_id  INTEGER REFERENCES requests (id),
    server_id   INTEGER REFERENCES servers (id),
    source      TEXT    NOT NULL CHECK (source IN ('officer', 'agent')),
    observed_by TEXT    NOT NULL,
    observed_at TEXT    NOT NULL,
    spec_json   TEXT    NOT NULL
);

CREATE TABLE spec_mismatches (
    id          INTEGER PRIMARY KEY,
    request_id  INTEGER REFERENCES requests (id),
    server_id   INTEGER REFERENCES servers (id),
    server_name TEXT    NOT NULL,
    field       TEXT    NOT NULL,
    declared    TEXT,
    observed    TEXT,
    source      TEXT    NOT NULL CHECK (source IN ('officer', 'agent')),
    detected_at TEXT    NOT NULL
);

-- Record #2 of the SOP: maintenance requests reported by the agencies.
CREATE TABLE maintenance_requests (
    id          INTEGER PRIMARY KEY,
    request_id  INTEGER NOT NULL UNIQUE REFERENCES requests (id),
    agency_id   INTEGER NOT NULL REFERENCES agencies (id),
    server_id   INTEGER REFERENCES servers (id),
    description TEXT    NOT NULL,
    reported_at TEXT    NOT NULL,
    status      TEXT    NOT NULL CHECK (status IN ('open', 'closed')),
    closed_at   TEXT
);

-- Official documents: forms and letters, numbered once, never rewritten.
CREATE TABLE document_counters (
    year        INTEGER PRIMARY KEY,
    last_seq    INTEGER NOT NULL
);

CREATE TABLE documents (
    id              INTEGER PRIMARY KEY,
    kind            TEXT    NOT NULL,
    request_id      INTEGER REFERENCES requests (id),
    step            INTEGER,
    year            INTEGER NOT NULL,
    seq             INTEGER NOT NULL,
    number          TEXT    NOT NULL UNIQUE,
    title           TEXT    NOT NULL,
    issued_at       TEXT    NOT NULL,
    issued_by       TEXT    NOT NULL,
    html            TEXT    NOT NULL,
    content_hash    TEXT    NOT NULL,
    UNIQUE (year, seq)
);
CREATE INDEX documents_by_request ON documents (request_id);

-- System actions owned by other components (backup plans, restores): an outbox written in
-- the same transaction as the step that triggered them.
CREATE TABLE pending_actions (
    id              INTEGER PRIMARY KEY,
    request_id      INTEGER NOT NULL REFERENCES requests (id),
    step            INTEGER NOT NULL,
    trigger_on      TEXT    NOT NULL CHECK (trigger_on IN ('enter', 'complete')),
    action          TEXT    NOT NULL,
    action_json     TEXT    NOT NULL,
    status          TEXT    NOT NULL CHECK (status IN ('pending', 'claimed', 'done', 'failed')),
    created_at      TEXT    NOT NULL,
    claimed_by      TEXT,
    claimed_at      TEXT,
    finished_at     TEXT,
    result_json     TEXT
);
CREATE INDEX pending_actions_by_status ON pending_actions (status, action);

-- The audit trail: a BLAKE3 hash chain (see src/app/audit.rs for the hashed encoding).
CREATE TABLE audit_log (
    seq         INTEGER PRIMARY KEY,
    at          TEXT    NOT NULL,
    actor       TEXT    NOT NULL,
    role        TEXT,
    action      TEXT    NOT NULL,
    entity      TEXT    NOT NULL,
    entity_id   TEXT    NOT NULL,
    before_json TEXT,
    after_json  TEXT,
    prev_hash   TEXT    NOT NULL,
    hash        TEXT    NOT NULL
);

-- The chain head: one row, locked by every append so that appends are serialised.
CREATE TABLE audit_head (
    id      INTEGER PRIMARY KEY CHECK (id = 1),
    seq     INTEGER NOT NULL,
    hash    TEXT    NOT NULL
);
INSERT INTO audit_head (id, seq, hash)
VALUES (1, 0, '0000000000000000000000000000000000000000000000000000000000000000');
