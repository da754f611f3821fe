-- Replica repositories: a plan's `replicate` runs copy its new snapshots to the agency's
-- replica repository on a second store. Keep in step with the other backend's
-- 0007_replicas.sql.
--
-- `runs` accepts the `replicate` kind.
ALTER TABLE backup_plans ADD COLUMN next_replicate_at TEXT;

ALTER TABLE runs DROP CONSTRAINT runs_kind_check;
ALTER TABLE runs ADD CONSTRAINT runs_kind_check
    CHECK (kind IN ('backup', 'retention', 'verify', 'drill', 'replicate'));
