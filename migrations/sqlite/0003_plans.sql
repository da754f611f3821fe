-- Backup plans and their runs. Keep in step with the other backend's 0003_plans.sql.
--
-- The catalog is the source of truth of the schedule: a plan's next slot is stored with
-- it, and a run is created by the one transaction that advances that slot, so every due
-- run exists exactly once however many daemons look. UNIQUE (plan_id, kind, due_at)
-- makes a second creation of the same slot impossible; the partial unique index lets at
-- most one run of a plan hold a lease at a time, so runs of one plan never overlap.
CREATE TABLE backup_plans (
    id           INTEGER PRIMARY KEY,
    agency_id    INTEGER NOT NULL REFERENCES agencies (id),
    request_id   INTEGER REFERENCES requests (id),
    name         TEXT    NOT NULL,
    spec_json    TEXT    NOT NULL,
    status       TEXT    NOT NULL
        CHECK (status IN ('approved', 'active', 'paused', 'stopped')),
    next_due_at        TEXT,
    next_retention_at  TEXT,
    next_verify_at     TEXT,
    created_at   TEXT    NOT NULL,
    created_by   TEXT    NOT NULL,
    updated_at   TEXT    NOT NULL,
    UNIQUE (agency_id, name)
);

CREATE TABLE runs (
    id                INTEGER PRIMARY KEY,
    plan_id           INTEGER NOT NULL REFERENCES backup_plans (id),
    kind              TEXT    NOT NULL CHECK (kind IN ('backup', 'retention', 'verify')),
    trigger           TEXT    NOT NULL CHECK (trigger IN ('schedule', 'catch_up', 'ad_hoc', 'request')),
    due_at            TEXT    NOT NULL,
    status            TEXT    NOT NULL
        CHECK (status IN ('queued', 'running', 'ok', 'partial', 'failed', 'cancelled', 'verify_differences')),
    lease_owner       TEXT,
    lease_expires_at  TEXT,
    attempts          INTEGER NOT NULL DEFAULT 0,
    queued_at         TEXT    NOT NULL,
    started_at        TEXT,
    finished_at       TEXT,
    stats_json        TEXT,
    snapshot_id       TEXT,
    error             TEXT,
    request_id        INTEGER REFERENCES requests (id),
    step              INTEGER,
    UNIQUE (plan_id, kind, due_at)
);

CREATE UNIQUE INDEX runs_one_running_per_plan ON runs (plan_id) WHERE status = 'running';
CREATE INDEX runs_queue ON runs (status, due_at);
