-- Restore requests carried out (procedure C, steps 2 to 7). Keep in step with
-- migrations/postgres/0006_restore_requests.sql.
--
-- A restore plan is written at C2 (each change is a new version, none is edited) and C3
-- approves exactly one version: its digest is recorded with the approval, so what runs
-- is what was approved. Restoring an older snapshot than the plan names returns older
-- data, so it runs only once the approving role has confirmed it.
CREATE TABLE restore_plans (
    id                  INTEGER PRIMARY KEY,
    request_id          INTEGER NOT NULL REFERENCES requests (id),
    version             INTEGER NOT NULL,
    plan_json           TEXT    NOT NULL,
    digest              TEXT    NOT NULL,
    created_by          TEXT    NOT NULL,
    created_at          TEXT    NOT NULL,
    approved_by         TEXT,
    approved_at         TEXT,
    older_confirmed_by  TEXT,
    older_confirmed_at  TEXT,
    UNIQUE (request_id, version)
);

-- Each restore of a request is one attempt of its plan: `primary` (C4), then the
-- fallback chain's steps (C6): `replica`, `previous_snapshot`, `alternate_target`.
-- `use_replica` lets damaged chunks be read from the agency's replica repository;
-- `check_json` is the command run on the target after the files are verified.
ALTER TABLE restores ADD COLUMN attempt TEXT;
ALTER TABLE restores ADD COLUMN use_replica INTEGER NOT NULL DEFAULT 0;
ALTER TABLE restores ADD COLUMN check_json TEXT;
CREATE INDEX restores_request ON restores (request_id);
