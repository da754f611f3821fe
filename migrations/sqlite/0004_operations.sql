-- Operations around the runs: restore drills, backup windows and notifications. Keep in
-- step with the other backend's 0004_operations.sql.
--
-- `runs` is rebuilt (SQLite cannot change a CHECK constraint in place) to accept the
-- `drill` kind, and gains `not_before`: a backup run due outside its plan's window waits
-- in the queue until the window opens.
ALTER TABLE backup_plans ADD COLUMN next_drill_at TEXT;

CREATE TABLE runs_new (
    id                INTEGER PRIMARY KEY,
    plan_id           INTEGER NOT NULL REFERENCES backup_plans (id),
    kind              TEXT    NOT NULL CHECK (kind IN ('backup', 'retention', 'verify', 'drill')),
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
    attempts, queued_at, started_at, finished_at, stats_json, snapshot_id, error, request_id, step)
SELECT id, plan_id, kind, trigger, due_at, status, lease_owner, lease_expires_at,
    attempts, queued_at, started_at, finished_at, stats_json, snapshot_id, error, request_id, step
FROM runs;
DROP TABLE runs;
ALTER TABLE runs_new RENAME TO runs;
CREATE UNIQUE INDEX runs_one_running_per_plan ON runs (plan_id) WHERE status = 'running';
CREATE INDEX runs_queue ON runs (status, due_at);
CREATE INDEX runs_finished ON runs (finished_at);

-- The notification outbox: one row per event and channel. `event_key` names the event
-- (`run:17`, `overdue:4:2026-03-01T19:00:00Z`, `sla:12:3`), so an event found again by
-- another daemon or on the next tick is not sent twice. Delivery is claimed like a run
-- (the claim pushes `next_attempt_at` ahead) and retried with back-off.
CREATE TABLE notifications (
    id               INTEGER PRIMARY KEY,
    event_key        TEXT    NOT NULL,
    channel          TEXT    NOT NULL CHECK (channel IN ('webhook', 'email')),
    kind             TEXT    NOT NULL,
    agency_id        INTEGER REFERENCES agencies (id),
    subject          TEXT    NOT NULL,
    body_json        TEXT    NOT NULL,
    status           TEXT    NOT NULL CHECK (status IN ('pending', 'sent', 'failed')),
    attempts         INTEGER NOT NULL DEFAULT 0,
    next_attempt_at  TEXT    NOT NULL,
    last_error       TEXT,
    created_at       TEXT    NOT NULL,
    sent_at          TEXT,
    UNIQUE (event_key, channel)
);
CREATE INDEX notifications_pending ON notifications (status, next_attempt_at);
