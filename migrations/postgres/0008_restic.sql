-- Plans on existing restic repositories: an `import` run lists the snapshots a restic
-- repository already holds into the catalog when it is adopted. Keep in step with the
-- other backend's 0008_restic.sql.
ALTER TABLE runs DROP CONSTRAINT runs_kind_check;
ALTER TABLE runs ADD CONSTRAINT runs_kind_check
    CHECK (kind IN ('backup', 'retention', 'verify', 'drill', 'replicate', 'import'));
