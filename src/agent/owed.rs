//! After-backup programs the agent owes its server.
//!
//! A job's after-backup program undoes what its before-backup program did: it releases
//! the file system snapshot, removes the dump. When the agent stops between the two —
//! killed, its server rebooted — nothing would run it, and an LVM snapshot left behind
//! slows every write of the server until it fills up. So a job with an after program is
//! recorded in the state directory before its before program starts, and the record is
//! removed once the after program has run. An agent that starts and finds records runs
//! their programs with `CADANG_BACKUP_RESULT=interrupted` before it dials the daemon.
//!
//! A job the daemon resumes afterwards runs its before program again (this agent no
//! longer knows it ran) and its after program once more at its end: both must cope
//! with having nothing to do.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::programs::AllowedPrograms;
use crate::rpc::pb;

/// What `CADANG_BACKUP_RESULT` says to a program run for a job the agent lost.
pub const INTERRUPTED: &str = "interrupted";

/// The records, one file per job, in a directory of the agent's state.
#[derive(Debug, Clone)]
pub struct OwedAfter {
    dir: PathBuf,
}

#[derive(Debug, Serialize, Deserialize)]
struct Record {
    job_id: String,
    command: Vec<String>,
    timeout_secs: u32,
}

/// What became of one owed program at start.
#[derive(Debug, PartialEq, Eq)]
pub struct Settled {
    pub job_id: String,
    /// Why it did not run or failed; `None` when it ran and succeeded.
    pub error: Option<String>,
}

impl OwedAfter {
    /// The records kept in `dir` (created when the first is written).
    pub fn new(dir: PathBuf) -> Self {
        OwedAfter { dir }
    }

    fn path(&self, job_id: &str) -> PathBuf {
        self.dir
            .join(format!("{}.json", hex::encode(job_id.as_bytes())))
    }

    /// Records that `job`'s after program is owed, if it has one. Durable before it
    /// returns: the before program may be what brings the server down.
    ///
    /// # Errors
    /// The state directory cannot be written: the job should not start.
    pub fn record(&self, job: &pb::BackupJob) -> std::io::Result<()> {
        if job.after_command.is_empty() {
            return Ok(());
        }
        let record = Record {
            job_id: job.job_id.clone(),
            command: job.after_command.clone(),
            timeout_secs: job.after_timeout_secs,
        };
        std::fs::create_dir_all(&self.dir)?;
        let path = self.path(&job.job_id);
        let partial = path.with_extension("partial");
        let body = serde_json::to_vec(&record).map_err(std::io::Error::other)?;
        {
            use std::io::Write;
            let mut file = std::fs::File::create(&partial)?;
            file.write_all(&body)?;
            file.sync_all()?;
        }
        std::fs::rename(&partial, &path)?;
        std::fs::File::open(&self.dir)?.sync_all()
    }

    /// The job's after program has run (or it had none): nothing is owed.
    pub fn settle(&self, job_id: &str) {
        match std::fs::remove_file(self.path(job_id)) {
            Ok(()) => {}
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
            Err(error) => {
                tracing::warn!(job = %job_id, %error, "cannot remove the record of an owed after-backup program");
            }
        }
    }

    /// Runs every owed program (each under its own timeout), as the agent starts, and
    /// removes the records. A program this agent no longer allows is not run: the
    /// refusal is logged and returned like a failure. An unreadable record is removed
    /// with a warning.
    pub fn run_owed(&self, allowed: &AllowedPrograms) -> Vec<Settled> {
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(entries) => entries,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Vec::new(),
            Err(error) => {
                tracing::warn!(dir = %self.dir.display(), %error, "cannot read the owed after-backup programs");
                return Vec::new();
            }
        };
        let mut paths: Vec<PathBuf> = entries
            .filter_map(|entry| entry.ok().map(|entry| entry.path()))
            .collect();
        paths.sort();
        let mut settled = Vec::new();
        for path in paths {
            match path.extension().and_then(|e| e.to_str()) {
                Some("json") => {}
                // A record whose writing was cut short: its job had not started.
                Some("partial") => {
                    let _ = std::fs::remove_file(&path);
                    continue;
                }
                _ => continue,
            }
            match read_record(&path) {
                Ok(record) => {
                    let error = run_one(&record, allowed);
                    settled.push(Settled {
                        job_id: record.job_id,
                        error,
                    });
                }
                Err(error) => {
                    tracing::warn!(path = %path.display(), %error, "unreadable record of an owed after-backup program; removed");
                }
            }
            if let Err(error) = std::fs::remove_file(&path) {
                tracing::warn!(path = %path.display(), %error, "cannot remove the record of an owed after-backup program");
            }
        }
        settled
    }
}

fn read_record(path: &Path) -> Result<Record, String> {
    let body = std::fs::read(path).map_err(|e| e.to_string())?;
    let record: Record = serde_json::from_slice(&body).map_err(|e| e.to_string())?;
    if record.command.is_empty() {
        return Err("no command".into());
    }
    Ok(record)
}

fn run_one(record: &Record, allowed: &AllowedPrograms) -> Option<String> {
    let command = match allowed.command(&record.command) {
        Ok(command) => command,
        Err(refusal) => {
            let error = format!("after-backup program refused: {refusal}");
            tracing::warn!(job = %record.job_id, %error, "an owed after-backup program was not run");
            return Some(error);
        }
    };
    tracing::info!(job = %record.job_id, "this agent stopped during the job: its after-backup program runs now");
    let timeout = Duration::from_secs(u64::from(record.timeout_secs.max(1)));
    crate::hook::run_after(&command, timeout, INTERRUPTED)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(id: &str, log: &Path) -> pb::BackupJob {
        pb::BackupJob {
            job_id: id.into(),
            after_command: vec![
                "/bin/sh".into(),
                "-c".into(),
                format!("echo {id}=$CADANG_BACKUP_RESULT >> {}", log.display()),
            ],
            after_timeout_secs: 30,
            ..Default::default()
        }
    }

    fn lines(log: &Path) -> Vec<String> {
        std::fs::read_to_string(log)
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    #[test]
    fn programs_owed_by_a_stopped_agent_run_once_at_its_next_start() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("after.log");
        let owed = OwedAfter::new(dir.path().join("state/owed"));
        let sh = AllowedPrograms::new(&[PathBuf::from("/bin/sh")]).unwrap();
        // Nothing recorded yet, not even the directory.
        assert!(owed.run_owed(&sh).is_empty());
        // Two jobs started; one ended normally and settled, the other was cut short.
        owed.record(&job("run:1", &log)).unwrap();
        owed.record(&job("run:2", &log)).unwrap();
        owed.settle("run:1");
        // A job without an after program leaves no record.
        owed.record(&pb::BackupJob {
            job_id: "run:3".into(),
            ..Default::default()
        })
        .unwrap();
        let settled = owed.run_owed(&sh);
        assert_eq!(
            settled,
            [Settled {
                job_id: "run:2".into(),
                error: None
            }]
        );
        assert_eq!(lines(&log), ["run:2=interrupted"]);
        // Run once: the record is gone.
        assert!(owed.run_owed(&sh).is_empty());
        assert_eq!(lines(&log), ["run:2=interrupted"]);
    }

    #[test]
    fn a_refused_or_unreadable_record_is_reported_and_dropped_without_running() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("after.log");
        let owed = OwedAfter::new(dir.path().join("owed"));
        owed.record(&job("run:4", &log)).unwrap();
        // The administrator has since withdrawn /bin/sh from the allow-list.
        let settled = owed.run_owed(&AllowedPrograms::default());
        assert_eq!(settled.len(), 1);
        let error = settled[0].error.as_deref().unwrap();
        assert!(
            error.contains("refused") && error.contains("/bin/sh"),
            "{error}"
        );
        assert!(lines(&log).is_empty());
        // Damaged records and a record cut short are removed, not run, not fatal.
        std::fs::write(owed.path("run:5"), b"{not json").unwrap();
        std::fs::write(
            owed.path("run:6"),
            br#"{"job_id":"run:6","command":[],"timeout_secs":1}"#,
        )
        .unwrap();
        std::fs::write(owed.path("run:7").with_extension("partial"), b"{").unwrap();
        let sh = AllowedPrograms::new(&[PathBuf::from("/bin/sh")]).unwrap();
        assert!(owed.run_owed(&sh).is_empty());
        assert_eq!(std::fs::read_dir(&owed.dir).unwrap().count(), 0);
    }

    #[test]
    fn a_failing_owed_program_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let owed = OwedAfter::new(dir.path().join("owed"));
        let mut failing = job("run:8", dir.path());
        failing.after_command = vec!["/bin/sh".into(), "-c".into(), "exit 3".into()];
        owed.record(&failing).unwrap();
        let sh = AllowedPrograms::new(&[PathBuf::from("/bin/sh")]).unwrap();
        let settled = owed.run_owed(&sh);
        let error = settled[0].error.as_deref().unwrap();
        assert!(error.contains("exit status: 3"), "{error}");
        assert!(owed.run_owed(&sh).is_empty());
    }
}
