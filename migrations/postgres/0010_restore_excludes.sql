-- What a restore leaves out: patterns in a backup plan's exclude syntax (a name
-- anywhere, or a path from the snapshot's root), as a JSON array; what is below a
-- matched directory is left out too. Keep in step with the other backend's
-- 0010_restore_excludes.sql.
ALTER TABLE restores ADD COLUMN excludes_json TEXT NOT NULL DEFAULT '[]';
