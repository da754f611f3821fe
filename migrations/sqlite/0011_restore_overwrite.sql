-- What a restore does with files already in its target directory: `always`
-- (replaced unless the agent finds the snapshot's content there), `if-changed`,
-- `if-newer` or `never`. Keep in step with the other backend's
-- 0011_restore_overwrite.sql.
ALTER TABLE restores ADD COLUMN overwrite TEXT NOT NULL DEFAULT 'always';
