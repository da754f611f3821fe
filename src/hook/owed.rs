//! After-backup programs owed to the host they run on.
//!
//! A job's after-backup program undoes what its before-backup program did: it releases
//! the file system snapshot, removes the dump. When the process that runs them — an
//! agent, or the daemon for a plan that reads its own host — stops between the two
//! (killed, the host rebooted), nothing would run it, and an LVM snapshot left behind
//! slows every write of the host until it fills up. So a job with an after program is
//! recorded in the process's state directory before its before program starts, and the
//! record is removed once the after program has run. A process that starts and finds
//! records runs their programs with `CADANG_BACKUP_RESULT=interrupted` before it takes
//! any work.
//!
//! A job resumed afterwards runs its before program again (the new process does not know
//! it ran) and its after program once more at its end: both must cope with having
//! nothing to do.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Turns a recorded command into the one to run, or says why it may not run.
pub type Resolve<'a> = dyn Fn(&[String]) -> Result<Vec<String>, String> + 'a;

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

    /// Records that job `job_id` owes `command` (its after program), if it has one.
    /// Durable before it returns: the before program may be what brings the host down.
    ///
    /// # Errors
    /// The state directory cannot be written: the job should not start.
    pub fn record(
        &self,
        job_id: &str,
        command: &[String],
        timeout_secs: u32,
    ) -> std::io::Result<()> {
        if command.is_empty() {
            return Ok(());
        }
        let record = Record {
            job_id: job_id.to_owned(),
            command: command.to_vec(),
            timeout_secs,
        };
        crate::engine::store::create_dir_durably(&self.dir, 0o777)?;
        let path = self.path(job_id);
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

    /// Runs every owed program (each under its own timeout), as the process starts, and
    /// removes the records. `resolve` turns a recorded command into the one to run, or
    /// refuses it (an agent's allow-list): a refused program is not run, and the refusal
    /// is logged and returned like a failure. An unreadable record is removed with a
    /// warning.
    pub fn run_owed(&self, resolve: &Resolve<'_>) -> Vec<Settled> {
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
                    let error = run_one(&record, resolve);
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

fn run_one(record: &Record, resolve: &Resolve<'_>) -> Option<String> {
    let command = match resolve(&record.command) {
        Ok(command) => command,
        Err(error) => {
            tracing::warn!(job = %record.job_id, %error, "an owed after-backup program was not run");
            return Some(error);
        }
    };
    tracing::info!(job = %record.job_id, "this process stopped during the job: its after-backup program runs now");
    let timeout = Duration::from_secs(u64::from(record.timeout_secs.max(1)));
    super::run_after(&command, timeout, INTERRUPTED)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn after(id: &str, log: &Path) -> Vec<String> {
        vec![
            "/bin/sh".into(),
            "-c".into(),
            format!("echo {id}=$CADANG_BACKUP_RESULT >> {}", log.display()),
        ]
    }

    fn any(command: &[String]) -> Result<Vec<String>, String> {
        Ok(command.to_vec())
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
        // Nothing recorded yet, not even the directory.
        assert!(owed.run_owed(&any).is_empty());
        // Two jobs started; one ended normally and settled, the other was cut short.
        owed.record("run:1", &after("run:1", &log), 30).unwrap();
        owed.record("run:2", &after("run:2", &log), 30).unwrap();
        owed.settle("run:1");
        // A job without an after program leaves no record.
        owed.record("run:3", &[], 30).unwrap();
        let settled = owed.run_owed(&any);
        assert_eq!(
            settled,
            [Settled {
                job_id: "run:2".into(),
                error: None
            }]
        );
        assert_eq!(lines(&log), ["run:2=interrupted"]);
        // Run once: the record is gone.
        assert!(owed.run_owed(&any).is_empty());
        assert_eq!(lines(&log), ["run:2=interrupted"]);
    }

    #[test]
    fn a_refused_or_unreadable_record_is_reported_and_dropped_without_running() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("after.log");
        let owed = OwedAfter::new(dir.path().join("owed"));
        owed.record("run:4", &after("run:4", &log), 30).unwrap();
        // The administrator has since withdrawn /bin/sh from the allow-list.
        let settled = owed.run_owed(&|command: &[String]| {
            Err(format!(
                "after-backup program refused: {} is not allowed",
                command[0]
            ))
        });
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
        assert!(owed.run_owed(&any).is_empty());
        assert_eq!(std::fs::read_dir(&owed.dir).unwrap().count(), 0);
    }

    #[test]
    fn a_failing_owed_program_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let owed = OwedAfter::new(dir.path().join("owed"));
        let failing = ["/bin/sh".to_owned(), "-c".to_owned(), "exit 3".to_owned()];
        owed.record("run:8", &failing, 30).unwrap();
        let settled = owed.run_owed(&any);
        let error = settled[0].error.as_deref().unwrap();
        assert!(error.contains("exit status: 3"), "{error}");
        assert!(owed.run_owed(&any).is_empty());
    }
}
