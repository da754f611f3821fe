-- A restore that also deletes from its target what the snapshot does not hold, in
-- the directories at or below the snapshot's backed-up paths (`--delete`). Keep in
-- step with the other backend's 0012_restore_delete.sql.
ALTER TABLE restores ADD COLUMN delete_extra BOOLEAN NOT NULL DEFAULT FALSE;
