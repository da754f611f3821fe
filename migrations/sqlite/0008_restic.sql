-- Plans on existing restic repositories: an `import` run lists the snapshots a restic
-- repository already holds into the catalog when it is adopted. Keep in step with the
-- other backend's 0008_restic.sql.
--
-- `runs` is rebuilt (SQLite cannot change a CHECK constraint in place) to accept the
-- `import` kind; its indexes are made again as 0007_replicas.sql made them.
CREATE TABLE runs_new (
    id                INTEGER PRIMARY KEY,
    plan_id           INTEGER NOT NULL REFERENCES backup_plans (id),
    kind              TEXT    NOT NULL
        CHECK (kind IN ('backup', 'retention', 'verify', 'drill', 'replicate', 'import')),
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
    not_before        TEXT,
    UNIQUE (plan_id, kind, due_at)
);
INSERT INTO runs_new (id, plan_id, kind, trigger, due_at, status, lease_owner, lease_expires_at,
    attempts, queued_at, started_at, finished_at, stats_json, snapshot_id, error, request_id, step,
    not_before)
SELECT id, plan_id, kind, trigger, due_at, status, lease_owner, lease_expires_at,
    attempts, queued_at, started_at, finished_at, stats_json, snapshot_id, error, request_id, step,
    not_before
FROM runs;
DROP TABLE runs;
ALTER TABLE runs_new RENAME TO runs;
CREATE UNIQUE INDEX runs_one_running_per_plan ON runs (plan_id) WHERE status = 'running';
CREATE INDEX runs_queue ON runs (status, due_at);
CREATE INDEX runs_finished ON runs (finished_at);
