//! Output helpers: exit codes, progress bars and JSON lines.

use std::io::IsTerminal;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};

/// Process exit codes, following restic where it has one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExitCode {
    /// Everything succeeded.
    Ok = 0,
    /// The command failed.
    Failure = 1,
    /// Partial success: some files could not be read, restored or verified.
    Partial = 3,
    /// The repository does not exist.
    NoRepository = 10,
    /// A lock is held by someone else.
    Locked = 11,
    /// Wrong password.
    WrongPassword = 12,
    /// The daemon refused this agent's credential (revoked or unknown): restarting does
    /// not help, so the agent's unit does not restart on it (`EX_CONFIG`).
    AgentRefused = 78,
    /// Interrupted.
    Interrupted = 130,
}

/// Print one JSON line to stdout.
/// An error and its causes on one line, as `a: b: c`, leaving out a cause whose text the
/// line already holds (an error that prints its source itself, such as a path and the
/// operating system's reason, would otherwise show the reason twice).
pub fn error_line(e: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if line.contains(&text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
    }
    line
}

pub fn json_line(v: &serde_json::Value) {
    println!("{v}");
}

/// A background reporter that renders progress from atomics: a bar on a
/// terminal, JSON status lines with `--json`, nothing with `--quiet`.
pub struct Reporter {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// A snapshot of progress counters.
pub struct Status {
    pub files_done: u64,
    pub total_files: u64,
    pub bytes_done: u64,
    pub total_bytes: u64,
    pub errors: u64,
}

impl Reporter {
    /// Start reporting. `read` samples the counters.
    pub fn start(
        json: bool,
        quiet: bool,
        verb: &'static str,
        read: impl Fn() -> Status + Send + 'static,
    ) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let tty = std::io::stderr().is_terminal();
        if quiet || (!json && !tty) {
            return Self { stop, thread: None };
        }
        let s = stop.clone();
        let thread = std::thread::spawn(move || {
            let start = Instant::now();
            let bar = (!json).then(|| {
                let b = ProgressBar::new(0);
                b.set_style(
                    ProgressStyle::with_template(
                        "{spinner} {prefix} [{elapsed_precise}] [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} ETA {eta} {msg}",
                    )
                    .expect("valid template")
                    .progress_chars("=> "),
                );
                b.set_prefix(verb);
                b
            });
            let mut last_json = Instant::now();
            while !s.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(100));
                let st = read();
                if let Some(b) = &bar {
                    b.set_length(st.total_bytes.max(st.bytes_done));
                    b.set_position(st.bytes_done);
                    b.set_message(format!(
                        "{}/{} files{}",
                        st.files_done,
                        st.total_files,
                        if st.errors > 0 {
                            format!(", {} errors", st.errors)
                        } else {
                            String::new()
                        }
                    ));
                } else if last_json.elapsed() >= Duration::from_secs(1) {
                    last_json = Instant::now();
                    let pct = if st.total_bytes > 0 {
                        st.bytes_done as f64 / st.total_bytes as f64
                    } else {
                        0.0
                    };
                    json_line(&serde_json::json!({
                        "message_type": "status",
                        "seconds_elapsed": start.elapsed().as_secs(),
                        "percent_done": pct.min(1.0),
                        "total_files": st.total_files,
                        "files_done": st.files_done,
                        "total_bytes": st.total_bytes,
                        "bytes_done": st.bytes_done,
                        "error_count": st.errors,
                    }));
                }
            }
            if let Some(b) = bar {
                b.finish_and_clear();
            }
        });
        Self {
            stop,
            thread: Some(thread),
        }
    }

    /// Stop and clear.
    pub fn finish(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Bytes for people.
pub fn human_bytes(n: u64) -> String {
    const U: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut v = n as f64;
    let mut i = 0;
    while v >= 1024.0 && i + 1 < U.len() {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{n} B")
    } else {
        format!("{v:.2} {}", U[i])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_error_line_names_each_cause_once() {
        let io = std::io::Error::from(std::io::ErrorKind::NotFound);
        let reason = io.to_string();
        let e = anyhow::Error::new(crate::engine::Error::io("/srv/data", io)).context("backup");
        assert_eq!(error_line(&e), format!("backup: /srv/data: {reason}"));
        let e = anyhow::anyhow!("disk full").context("writing the pack");
        assert_eq!(error_line(&e), "writing the pack: disk full");
    }
}
