//! A plan's before-backup program (`pg_dump -Fc -f /var/backups/simpeg.dump simpeg`, a file
//! system snapshot): run on the host the plan reads — by the agent on a colocated server,
//! by the daemon for its own host — before anything is read, so the backup holds a
//! consistent copy of what a live service keeps changing. And its after-backup program,
//! run once the backup has read what it reads, whatever the outcome (the snapshot
//! released, the dump removed), told the outcome in `CADANG_BACKUP_RESULT`.
//!
//! A program with arguments, no shell, stdin closed, in a process group of its own so a
//! timeout or a cancelled job ends it and everything it started. A failure, a timeout or a
//! program that cannot start fails the run: nothing is backed up rather than a
//! half-written dump. The error names the program, its exit status and the end of what it
//! printed; never its arguments, which may name a database and its user.

pub mod owed;

use std::io::Read;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Most output kept for the error (its end: a failing program prints why last).
const KEEP: usize = 2048;
/// How often the program is looked at while it runs.
const POLL: Duration = Duration::from_millis(50);
/// How long the output is waited for once the program has exited (a child it left
/// behind may hold the pipe open).
const DRAIN: Duration = Duration::from_secs(2);

/// The environment variable that tells an after-backup program how the backup ended:
/// `ok`, `partial` (some files could not be read), `failed` or `cancelled`, and
/// `interrupted` when an agent that stopped during the job runs it as it starts again.
pub const RESULT_VAR: &str = "CADANG_BACKUP_RESULT";

/// When a plan's program runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// Before anything is read; its failure fails the run.
    Before,
    /// After the backup has read everything, whatever the outcome.
    After,
}

impl std::fmt::Display for Stage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Before => "before-backup",
            Self::After => "after-backup",
        })
    }
}

/// Why a plan's program did not succeed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HookError {
    /// The command is empty or its program is not an absolute path.
    #[error("the {stage} command must name its program by absolute path")]
    Invalid {
        /// Which program.
        stage: Stage,
    },
    /// The program could not be started.
    #[error("cannot start the {stage} program `{program}`: {reason}")]
    Start {
        /// Which program.
        stage: Stage,
        /// The program.
        program: String,
        /// Why.
        reason: String,
    },
    /// It exited with a failure status or was ended by a signal.
    #[error("the {stage} program `{program}` failed ({status}){}", output_suffix(.output))]
    Failed {
        /// Which program.
        stage: Stage,
        /// The program.
        program: String,
        /// How it ended.
        status: String,
        /// The end of its output.
        output: String,
    },
    /// It ran past its timeout and was killed with its process group.
    #[error("the {stage} program `{program}` did not finish within {secs} s and was killed{}", output_suffix(.output))]
    TimedOut {
        /// Which program.
        stage: Stage,
        /// The program.
        program: String,
        /// The timeout.
        secs: u64,
        /// The end of its output.
        output: String,
    },
    /// The job was cancelled while it ran; it was killed with its process group.
    #[error("cancelled while the {stage} program `{program}` ran")]
    Cancelled {
        /// Which program.
        stage: Stage,
        /// The program.
        program: String,
    },
}

fn output_suffix(output: &str) -> String {
    let output = output.trim();
    if output.is_empty() {
        String::new()
    } else {
        format!(": {output}")
    }
}

/// Checks a command before it is stored in a plan: a non-empty argv whose program is an
/// absolute path (a plan does not depend on the `PATH` of whichever host runs it).
///
/// # Errors
/// [`HookError::Invalid`].
pub fn validate(stage: Stage, command: &[String]) -> Result<(), HookError> {
    match command.first() {
        Some(program) if program.starts_with('/') && !program.contains('\0') => Ok(()),
        _ => Err(HookError::Invalid { stage }),
    }
}

/// Runs `command` with `env` added to its environment, to its end, at most `timeout`,
/// and stops it when `cancel` is set.
///
/// # Errors
/// [`HookError`] for every way it can fail.
pub fn run(
    stage: Stage,
    command: &[String],
    env: &[(&str, &str)],
    timeout: Duration,
    cancel: &AtomicBool,
) -> Result<(), HookError> {
    validate(stage, command)?;
    let (program, args) = command.split_first().ok_or(HookError::Invalid { stage })?;
    let mut child = Command::new(program)
        .args(args)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .map_err(|e| HookError::Start {
            stage,
            program: program.clone(),
            reason: e.to_string(),
        })?;
    let (tx, rx) = mpsc::channel();
    for pipe in [
        child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
        child
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    ]
    .into_iter()
    .flatten()
    {
        let tx = tx.clone();
        std::thread::spawn(move || {
            let _ = tx.send(keep_tail(pipe));
        });
    }
    drop(tx);
    // The whole group: a script's own children (the dump it started) end with it.
    let group = i32::try_from(child.id()).unwrap_or(0);
    let kill_group = || {
        if group > 0 {
            // SAFETY: kill has no memory preconditions; a group that is gone gives ESRCH.
            unsafe {
                libc::kill(-group, libc::SIGKILL);
            }
        }
    };
    let started = Instant::now();
    let ended = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Ok(status),
            Ok(None) => {}
            Err(e) => {
                kill_group();
                let _ = child.wait();
                break Err(HookError::Failed {
                    stage,
                    program: program.clone(),
                    status: format!("cannot wait for it: {e}"),
                    output: String::new(),
                });
            }
        }
        if cancel.load(Ordering::Relaxed) {
            kill_group();
            let _ = child.wait();
            break Err(HookError::Cancelled {
                stage,
                program: program.clone(),
            });
        }
        if started.elapsed() >= timeout {
            kill_group();
            let _ = child.wait();
            break Err(HookError::TimedOut {
                stage,
                program: program.clone(),
                secs: timeout.as_secs(),
                output: String::new(),
            });
        }
        std::thread::sleep(POLL);
    };
    let mut output = Vec::new();
    let deadline = Instant::now() + DRAIN;
    for _ in 0..2 {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(part) => output.extend_from_slice(&part),
            Err(_) => break,
        }
    }
    let start = output.len().saturating_sub(KEEP);
    let output = String::from_utf8_lossy(&output[start..]).into_owned();
    match ended {
        Ok(status) if status.success() => Ok(()),
        Ok(status) => Err(HookError::Failed {
            stage,
            program: program.clone(),
            status: status.to_string(),
            output,
        }),
        Err(HookError::TimedOut {
            stage,
            program,
            secs,
            ..
        }) => Err(HookError::TimedOut {
            stage,
            program,
            secs,
            output,
        }),
        Err(e) => Err(e),
    }
}

/// Runs an after-backup program, told `result` in [`RESULT_VAR`], to its end or its
/// `timeout` — not stopped by the run's cancel: what it undoes must be undone. Returns
/// why it failed, logged here.
pub fn run_after(command: &[String], timeout: Duration, result: &str) -> Option<String> {
    let program = command.first().map_or("", String::as_str);
    tracing::info!(program, result, "running the after-backup program");
    let failure = run(
        Stage::After,
        command,
        &[(RESULT_VAR, result)],
        timeout,
        &AtomicBool::new(false),
    )
    .err()?
    .to_string();
    tracing::warn!(%failure, "the after-backup program failed");
    Some(failure)
}

/// A run's error followed by its after-backup program's failure.
#[must_use]
pub fn and_after(error: Option<String>, failure: &str) -> String {
    match error {
        Some(error) => format!("{error}; {failure}"),
        None => failure.to_owned(),
    }
}

/// Reads a pipe to its end, keeping its last [`KEEP`] bytes.
fn keep_tail(mut pipe: Box<dyn Read + Send>) -> Vec<u8> {
    let mut kept = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        match pipe.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                kept.extend_from_slice(&buf[..n]);
                if kept.len() > 2 * KEEP {
                    kept.drain(..kept.len() - KEEP);
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
    let start = kept.len().saturating_sub(KEEP);
    kept.split_off(start)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(parts: &[&str]) -> Vec<String> {
        parts.iter().map(|s| (*s).to_owned()).collect()
    }

    const SECOND: Duration = Duration::from_secs(1);

    #[test]
    fn success_failure_and_what_is_refused() {
        let no = AtomicBool::new(false);
        let dir = tempfile::tempdir().unwrap();
        let dump = dir.path().join("simpeg.dump");
        let script = format!("echo dumping; echo data > {}", dump.display());
        let before = Stage::Before;
        run(
            before,
            &argv(&["/bin/sh", "-c", &script]),
            &[],
            5 * SECOND,
            &no,
        )
        .unwrap();
        assert_eq!(std::fs::read(&dump).unwrap(), b"data\n");
        // An after-backup program is told the outcome.
        let script = format!("echo ${RESULT_VAR} > {}", dump.display());
        run(
            Stage::After,
            &argv(&["/bin/sh", "-c", &script]),
            &[(RESULT_VAR, "partial")],
            5 * SECOND,
            &no,
        )
        .unwrap();
        assert_eq!(std::fs::read(&dump).unwrap(), b"partial\n");
        let after = run(Stage::After, &argv(&["/bin/false"]), &[], SECOND, &no).unwrap_err();
        assert!(
            after
                .to_string()
                .starts_with("the after-backup program `/bin/false` failed"),
            "{after}"
        );

        let failed = run(
            before,
            &argv(&[
                "/bin/sh",
                "-c",
                "echo 'pg_dump: error: connection refused' >&2; exit 1",
                "sh",
                "--password=rahasia",
            ]),
            &[],
            5 * SECOND,
            &no,
        )
        .unwrap_err();
        let text = failed.to_string();
        assert!(
            text.contains("`/bin/sh` failed (exit status: 1)")
                && text.ends_with("pg_dump: error: connection refused"),
            "{text}"
        );
        assert!(
            !text.contains("rahasia"),
            "arguments are never shown: {text}"
        );

        let missing = run(before, &argv(&["/nonexistent/dump"]), &[], SECOND, &no).unwrap_err();
        assert!(matches!(missing, HookError::Start { .. }), "{missing:?}");
        assert_eq!(
            run(before, &argv(&["pg_dump"]), &[], SECOND, &no),
            Err(HookError::Invalid { stage: before })
        );
        assert_eq!(
            run(Stage::After, &[], &[], SECOND, &no),
            Err(HookError::Invalid {
                stage: Stage::After
            })
        );
        assert!(validate(before, &argv(&["/usr/bin/pg_dump", "-Fc"])).is_ok());

        // A program that prints much keeps only the end of it.
        let chatty = run(
            before,
            &argv(&[
                "/bin/sh",
                "-c",
                "head -c 100000 /dev/zero | tr '\\0' x; echo END; exit 2",
            ]),
            &[],
            5 * SECOND,
            &no,
        )
        .unwrap_err();
        let HookError::Failed { output, .. } = chatty else {
            panic!("{chatty:?}")
        };
        assert!(
            output.len() <= KEEP && output.ends_with("END\n"),
            "{}",
            output.len()
        );
    }

    /// A timeout kills the program and what it started (its process group); so does a
    /// cancelled job.
    #[test]
    fn a_timeout_or_a_cancel_kills_the_whole_group() {
        let dir = tempfile::tempdir().unwrap();
        let pid_file = dir.path().join("child.pid");
        let script = format!("sleep 60 & echo $! > {}; wait", pid_file.display());
        let started = Instant::now();
        let slow = run(
            Stage::Before,
            &argv(&["/bin/sh", "-c", &script]),
            &[],
            SECOND,
            &AtomicBool::new(false),
        )
        .unwrap_err();
        assert!(
            matches!(slow, HookError::TimedOut { secs: 1, .. }),
            "{slow:?}"
        );
        assert!(started.elapsed() < 10 * SECOND);
        let pid: i32 = std::fs::read_to_string(&pid_file)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        // Gone, or a zombie waiting for whichever process adopted it to reap it.
        let running = || {
            std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
                let state = stat.rsplit_once(')').map(|(_, rest)| rest.trim_start());
                !state.is_some_and(|rest| rest.starts_with('Z'))
            })
        };
        let gone = (0..100).any(|_| {
            let alive = running();
            std::thread::sleep(Duration::from_millis(20));
            !alive
        });
        assert!(gone, "the `sleep` the script started was killed too");

        let cancel = std::sync::Arc::new(AtomicBool::new(false));
        let setter = {
            let cancel = cancel.clone();
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(300));
                cancel.store(true, Ordering::Relaxed);
            })
        };
        let cancelled = run(
            Stage::After,
            &argv(&["/bin/sleep", "60"]),
            &[],
            60 * SECOND,
            &cancel,
        )
        .unwrap_err();
        setter.join().unwrap();
        assert!(
            matches!(cancelled, HookError::Cancelled { .. }),
            "{cancelled:?}"
        );
    }
}
