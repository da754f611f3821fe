//! The adapter's one error type, and the mapping from restic's exit codes and
//! messages onto it.
//!
//! Restic versions differ: 0.17 introduced dedicated exit codes (10 no repository,
//! 11 locked, 12 wrong password) while older versions exit 1 and say what happened on
//! stderr. Both are mapped, so the caller sees the same variant whatever the version.
//! Every string carried here has been scrubbed of the repository password.

use std::path::PathBuf;

use super::json::ResticVersion;
use super::verify::RestoreProblem;

/// Everything that can go wrong when driving restic.
///
/// Grouped by what the caller can do: fix the setup (`NotFound`, `NotRunnable`,
/// `VersionTooOld`, `InvalidInput`), fix the repository credentials or location
/// (`WrongPassword`, `RepositoryNotFound`, `AlreadyInitialized`), retry later
/// (`Locked`, `Cancelled`, `KilledBySignal`, `Interrupted`), or investigate
/// (`Failed`, `Unparsable`, `RestoreIncomplete`, `Io`).
#[derive(Debug, thiserror::Error)]
pub enum ResticError {
    /// The restic binary does not exist where it was looked for.
    #[error(
        "restic binary not found at `{}`: install restic 0.12 or newer, or set the path to the binary in cadang's configuration",
        path.display()
    )]
    NotFound {
        /// The configured path, or `restic` when `PATH` was searched.
        path: PathBuf,
    },

    /// The binary exists but could not be run, or `restic version` printed something
    /// that is not a restic version.
    #[error(
        "restic binary `{}` is not runnable: {reason}; point cadang's configuration at a working restic binary",
        path.display()
    )]
    NotRunnable {
        /// The binary that was tried.
        path: PathBuf,
        /// Why it could not be used.
        reason: String,
    },

    /// The installed restic is older than the adapter supports.
    #[error("restic {found} is too old: cadang needs restic {minimum} or newer; upgrade restic")]
    VersionTooOld {
        /// The version `restic version` reported.
        found: ResticVersion,
        /// The oldest supported version.
        minimum: ResticVersion,
    },

    /// The caller passed options restic cannot be given safely.
    #[error("invalid restic request: {0}")]
    InvalidInput(String),

    /// No key of the repository opens with the password.
    #[error(
        "wrong password for restic repository {location}: no key matches; check the password stored for this repository"
    )]
    WrongPassword {
        /// The repository location.
        location: String,
    },

    /// There is no repository at the location.
    #[error(
        "no restic repository at {location}: check the location and credentials, or initialise it first"
    )]
    RepositoryNotFound {
        /// The repository location.
        location: String,
    },

    /// `init` found a repository already there.
    #[error("a restic repository already exists at {location}")]
    AlreadyInitialized {
        /// The repository location.
        location: String,
    },

    /// Another process holds a conflicting lock on the repository.
    #[error(
        "restic repository {location} is locked: {detail}; retry later, or run `restic unlock` if the holder is gone"
    )]
    Locked {
        /// The repository location.
        location: String,
        /// Restic's description of the lock holder.
        detail: String,
    },

    /// The run was cancelled through [`Cancel`](super::Cancel).
    #[error(
        "restic {command} was cancelled{}",
        if *forced { " and had to be killed (a stale lock may remain; `restic unlock` removes it)" } else { "" }
    )]
    Cancelled {
        /// The restic command that was running.
        command: String,
        /// Whether restic ignored SIGINT for the grace period and was killed.
        forced: bool,
    },

    /// Restic was killed by a signal that cadang did not send.
    #[error(
        "restic {command} was killed by {signal} (signal {number}); look for the OOM killer or an operator in the system log"
    )]
    KilledBySignal {
        /// The restic command that was running.
        command: String,
        /// The signal's name, such as `SIGKILL`.
        signal: String,
        /// The signal's number.
        number: i32,
    },

    /// Restic received SIGINT or SIGTERM from outside cadang and stopped (exit code 130).
    #[error("restic {command} was interrupted by a signal from outside cadang (exit code 130)")]
    Interrupted {
        /// The restic command that was running.
        command: String,
    },

    /// Restic failed in a way that has no dedicated variant.
    #[error(
        "restic {command} failed with exit code {code}: {}",
        if stderr_tail.is_empty() { "no error output".to_string() } else { stderr_tail.join(" | ") }
    )]
    Failed {
        /// The restic command that failed.
        command: String,
        /// Restic's exit code.
        code: i32,
        /// The last lines restic wrote to stderr (bounded, scrubbed).
        stderr_tail: Vec<String>,
    },

    /// Restic printed output the adapter cannot interpret.
    #[error(
        "cannot parse the output of restic {command} ({reason}) in line: {line}; this restic version may be unsupported"
    )]
    Unparsable {
        /// The restic command.
        command: String,
        /// What was wrong with the line.
        reason: String,
        /// The offending line, truncated and scrubbed.
        line: String,
    },

    /// The restore did not reproduce the snapshot: restic reported errors, or the
    /// verification found differences. Nothing about the target can be trusted.
    #[error(
        "restore of snapshot {snapshot} into {} is incomplete: {problems_total} problem(s){}; restore again from another snapshot and run `check` with read-data on the repository",
        target.display(),
        problems.first().map(|p| format!(", first {p}")).unwrap_or_default()
    )]
    RestoreIncomplete {
        /// The snapshot that was restored.
        snapshot: String,
        /// The restore target.
        target: PathBuf,
        /// The first problems found (bounded), by path.
        problems: Vec<RestoreProblem>,
        /// How many problems there were in total.
        problems_total: u64,
    },

    /// Local I/O around restic failed (password file, pipes, restore verification walk).
    #[error("{what}: {source}")]
    Io {
        /// What the adapter was doing.
        what: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
}

impl ResticError {
    /// Whether retrying the same request later may succeed without anyone changing
    /// anything (a lock held by another run, a cancelled or interrupted run).
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            ResticError::Locked { .. }
                | ResticError::Cancelled { .. }
                | ResticError::Interrupted { .. }
                | ResticError::KilledBySignal { .. }
        )
    }

    pub(crate) fn io(what: impl Into<String>, source: std::io::Error) -> Self {
        ResticError::Io {
            what: what.into(),
            source,
        }
    }
}

/// How a finished restic process ended, with its scrubbed stderr.
#[derive(Debug)]
pub(crate) struct Exit {
    pub command: String,
    pub location: String,
    /// The exit code; `None` when a signal ended the process.
    pub code: Option<i32>,
    pub signal: Option<i32>,
    /// Set when cadang cancelled the run; `true` when SIGKILL was needed.
    pub cancelled: Option<bool>,
    pub stderr_tail: Vec<String>,
}

impl Exit {
    /// Succeeds when restic exited with one of `ok_codes`; otherwise maps the exit to
    /// the most specific error. A run that finished successfully although a cancel
    /// was requested counts as finished: its result is real.
    pub(crate) fn require(&self, ok_codes: &[i32]) -> Result<i32, ResticError> {
        match self.code {
            Some(code) if ok_codes.contains(&code) => Ok(code),
            _ => Err(self.to_error()),
        }
    }

    /// Maps a failed exit to an error, exit codes first, then restic's messages.
    pub(crate) fn to_error(&self) -> ResticError {
        let command = self.command.clone();
        let location = self.location.clone();
        if let Some(forced) = self.cancelled {
            return ResticError::Cancelled { command, forced };
        }
        if let Some(number) = self.signal {
            return ResticError::KilledBySignal {
                command,
                signal: signal_name(number),
                number,
            };
        }
        let text = self.stderr_tail.join("\n");
        let has = |needle: &str| text.contains(needle);
        let code = self.code.unwrap_or(-1);
        if code == 12 || has("wrong password or no key found") {
            return ResticError::WrongPassword { location };
        }
        if code == 10
            || has("Is there a repository at the following location?")
            || has("unable to open config file")
            || has("repository does not exist")
        {
            return ResticError::RepositoryNotFound { location };
        }
        if code == 11 || has("repository is already locked") || has("unable to create lock") {
            let detail = self
                .stderr_tail
                .iter()
                .find(|l| l.contains("locked"))
                .map(|l| strip_fatal(l).to_string())
                .unwrap_or_else(|| "held by another restic process".to_string());
            return ResticError::Locked { location, detail };
        }
        if has("config file already exists") || has("already initialized") {
            return ResticError::AlreadyInitialized { location };
        }
        if code == 130 {
            return ResticError::Interrupted { command };
        }
        ResticError::Failed {
            command,
            code,
            stderr_tail: self.stderr_tail.clone(),
        }
    }
}

fn strip_fatal(line: &str) -> &str {
    line.strip_prefix("Fatal: ").unwrap_or(line)
}

/// The conventional name of a Unix signal.
pub(crate) fn signal_name(number: i32) -> String {
    let name = match number {
        libc::SIGHUP => "SIGHUP",
        libc::SIGINT => "SIGINT",
        libc::SIGQUIT => "SIGQUIT",
        libc::SIGILL => "SIGILL",
        libc::SIGABRT => "SIGABRT",
        libc::SIGBUS => "SIGBUS",
        libc::SIGFPE => "SIGFPE",
        libc::SIGKILL => "SIGKILL",
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGPIPE => "SIGPIPE",
        libc::SIGALRM => "SIGALRM",
        libc::SIGTERM => "SIGTERM",
        libc::SIGXCPU => "SIGXCPU",
        libc::SIGXFSZ => "SIGXFSZ",
        _ => return format!("signal {number}"),
    };
    name.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exit(code: Option<i32>, signal: Option<i32>, stderr: &str) -> Exit {
        Exit {
            command: "snapshots".into(),
            location: "/srv/repo".into(),
            code,
            signal,
            cancelled: None,
            stderr_tail: stderr.lines().map(str::to_string).collect(),
        }
    }

    #[test]
    fn restic_0_14_messages_map_to_variants() {
        let wrong = include_str!("testdata/wrong_password_0_14.stderr");
        assert!(matches!(
            exit(Some(1), None, wrong).to_error(),
            ResticError::WrongPassword { .. }
        ));
        let missing = include_str!("testdata/no_repo_0_14.stderr");
        assert!(matches!(
            exit(Some(1), None, missing).to_error(),
            ResticError::RepositoryNotFound { .. }
        ));
        let locked = "unable to create lock in backend: repository is already locked by PID 27983 on vm by root (UID 0, GID 0)\nlock was created at 2026-11-30 13:44:59 (3.027943842s ago)";
        match exit(Some(1), None, locked).to_error() {
            ResticError::Locked { detail, .. } => assert!(detail.contains("PID 27983")),
            other => panic!("expected Locked, got {other:?}"),
        }
        let exists = "Fatal: create repository at /srv/repo failed: config file already exists";
        assert!(matches!(
            exit(Some(1), None, exists).to_error(),
            ResticError::AlreadyInitialized { .. }
        ));
    }

    #[test]
    fn restic_0_17_exit_codes_map_to_variants() {
        assert!(matches!(
            exit(Some(10), None, "").to_error(),
            ResticError::RepositoryNotFound { .. }
        ));
        assert!(matches!(
            exit(Some(11), None, "").to_error(),
            ResticError::Locked { .. }
        ));
        assert!(matches!(
            exit(Some(12), None, "").to_error(),
            ResticError::WrongPassword { .. }
        ));
        assert!(matches!(
            exit(Some(130), None, "").to_error(),
            ResticError::Interrupted { .. }
        ));
        match exit(Some(2), None, "panic: boom").to_error() {
            ResticError::Failed {
                code, stderr_tail, ..
            } => {
                assert_eq!(code, 2);
                assert_eq!(stderr_tail, vec!["panic: boom".to_string()]);
            }
            other => panic!("expected Failed, got {other:?}"),
        }
    }

    #[test]
    fn signals_and_cancellation_take_precedence() {
        match exit(None, Some(libc::SIGKILL), "").to_error() {
            ResticError::KilledBySignal { signal, number, .. } => {
                assert_eq!(signal, "SIGKILL");
                assert_eq!(number, 9);
            }
            other => panic!("expected KilledBySignal, got {other:?}"),
        }
        let mut cancelled = exit(None, Some(libc::SIGKILL), "");
        cancelled.cancelled = Some(true);
        assert!(matches!(
            cancelled.to_error(),
            ResticError::Cancelled { forced: true, .. }
        ));
        assert_eq!(signal_name(64), "signal 64");
    }

    #[test]
    fn require_accepts_listed_codes_only() {
        assert_eq!(exit(Some(3), None, "").require(&[0, 3]).ok(), Some(3));
        assert!(exit(Some(3), None, "").require(&[0]).is_err());
        assert!(exit(None, Some(9), "").require(&[0]).is_err());
    }
}
