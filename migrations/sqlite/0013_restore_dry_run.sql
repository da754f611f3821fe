-- A restore that only finds out what it would do (`--dry-run`): the agent reads
-- what the target holds and writes nothing. Keep in step with the other backend's
-- 0013_restore_dry_run.sql.
ALTER TABLE restores ADD COLUMN dry_run INTEGER NOT NULL DEFAULT 0;
