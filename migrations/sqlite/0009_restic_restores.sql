-- Restores from plans on existing restic repositories: such a restore reads the plan's
-- restic repository (not the server's snapshots in the agency's cadang repository), so
-- the restore names the plan. NULL for restores of a server's cadang snapshots. Keep in
-- step with the other backend's 0009_restic_restores.sql.
ALTER TABLE restores ADD COLUMN plan_id INTEGER REFERENCES backup_plans (id);
