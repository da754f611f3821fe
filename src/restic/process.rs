//! Running the restic binary: the environment it sees, the password file, reading
//! its output line by line with bounded memory, and stopping it on cancel.
//!
//! Security: the password reaches restic only through `RESTIC_PASSWORD_FILE`, a
//! 0600 file in a private 0700 directory that is removed when the run ends — also on
//! error, on cancel and when the caller drops the future (the guard's `Drop`). The
//! repository location goes through `RESTIC_REPOSITORY`, not argv, because URLs can
//! carry credentials and argv is world-readable in `/proc`. Inherited `RESTIC_*`
//! variables are removed so that a stray `RESTIC_PASSWORD` in the daemon's
//! environment can never override the repository the caller named. Everything read
//! from restic is scrubbed of the password before it can reach an error or a log.

use std::collections::VecDeque;
use std::ffi::OsString;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::{Child, Command};
use tokio::time::Instant;

use super::error::{Exit, ResticError};
use super::{Cancel, Restic, ResticRepo, Secret};

/// Longest stdout line accepted from streaming commands (backup, ls, restore):
/// their lines are small, so a longer one means something is wrong.
pub(crate) const STREAM_LINE_MAX: usize = 1 << 20;
/// Longest output accepted from single-document commands (snapshots, forget, stats),
/// whose one JSON line grows with the number of snapshots.
pub(crate) const DOCUMENT_MAX: usize = 256 << 20;
/// Stderr lines kept for error messages.
const STDERR_TAIL_LINES: usize = 20;
/// Longest stderr line kept, in characters.
const STDERR_LINE_CHARS: usize = 500;
/// Longest offending line quoted in an [`ResticError::Unparsable`], in characters.
const QUOTED_LINE_CHARS: usize = 200;
/// How long to keep reading pipes after restic exited before giving up on them (a
/// grandchild of restic, such as an rclone backend, may hold them open).
const PIPE_DRAIN_AFTER_EXIT: Duration = Duration::from_secs(5);

/// Environment variable names the adapter sets itself; a repository's `env` may not.
const RESERVED_ENV: &[&str] = &[
    "RESTIC_REPOSITORY",
    "RESTIC_REPOSITORY_FILE",
    "RESTIC_PASSWORD",
    "RESTIC_PASSWORD_FILE",
    "RESTIC_PASSWORD_COMMAND",
    "RESTIC_FROM_REPOSITORY",
    "RESTIC_FROM_REPOSITORY_FILE",
    "RESTIC_FROM_PASSWORD",
    "RESTIC_FROM_PASSWORD_FILE",
    "RESTIC_FROM_PASSWORD_COMMAND",
];

/// One restic invocation.
pub(crate) struct Invocation<'a> {
    /// The restic command, such as `backup`.
    pub command: &'static str,
    /// Arguments after the command.
    pub args: Vec<OsString>,
    /// The repository, or `None` for `version`.
    pub repo: Option<&'a ResticRepo>,
    /// The source repository of `copy` (and of `init --copy-chunker-params`).
    pub from: Option<&'a ResticRepo>,
    pub cancel: Option<&'a Cancel>,
    /// Longest stdout line accepted.
    pub max_line: usize,
}

/// Replaces secrets in text that came from restic or from the caller.
#[derive(Clone, Default)]
pub(crate) struct Scrubber {
    secrets: Vec<String>,
}

impl Scrubber {
    /// Scrubs the repositories' passwords and the values of credential-like variables
    /// of their environments.
    pub(crate) fn for_repo(repo: Option<&ResticRepo>) -> Self {
        Self::for_repos([repo])
    }

    /// As [`Scrubber::for_repo`], for several repositories (`copy` opens two).
    pub(crate) fn for_repos<'r>(repos: impl IntoIterator<Item = Option<&'r ResticRepo>>) -> Self {
        let mut secrets = Vec::new();
        for repo in repos.into_iter().flatten() {
            secrets.push(repo.password.expose().to_string());
            for (name, value) in &repo.env {
                let name = name.to_ascii_uppercase();
                let sensitive = ["SECRET", "PASSWORD", "TOKEN", "KEY", "CREDENTIAL"]
                    .iter()
                    .any(|w| name.contains(w));
                if sensitive && value.len() >= 4 {
                    secrets.push(value.clone());
                }
            }
        }
        secrets.retain(|s| !s.is_empty());
        // Longest first, so a secret containing another is replaced whole.
        secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
        Scrubber { secrets }
    }

    pub(crate) fn scrub(&self, text: &str) -> String {
        let mut out = text.to_string();
        for secret in &self.secrets {
            if out.contains(secret.as_str()) {
                out = out.replace(secret.as_str(), "[redacted]");
            }
        }
        out
    }
}

/// Checks what a repository asks of the environment before anything is spawned.
pub(crate) fn validate_repo(repo: &ResticRepo) -> Result<(), ResticError> {
    if repo.location.trim().is_empty() {
        return Err(ResticError::InvalidInput(
            "the repository location is empty; set it to a path or a restic backend URL".into(),
        ));
    }
    let password = repo.password.expose();
    if password.is_empty() || password.trim() != password || password.contains('\0') {
        // Restic trims whitespace from password files, so such a password would not
        // be the one the repository was created with.
        return Err(ResticError::InvalidInput(
            "the repository password is empty, contains NUL, or starts or ends with whitespace; restic cannot read such a password from a file"
                .into(),
        ));
    }
    for (name, _) in &repo.env {
        if RESERVED_ENV.contains(&name.as_str()) {
            return Err(ResticError::InvalidInput(format!(
                "the repository environment sets {name}, which cadang sets itself; use the repository's location and password fields instead"
            )));
        }
        if name.is_empty() || name.contains(['=', '\0']) {
            return Err(ResticError::InvalidInput(format!(
                "the repository environment has an invalid variable name {name:?}"
            )));
        }
    }
    Ok(())
}

/// The password file for one run; the directory and file are removed on drop.
struct PasswordFile {
    dir: PathBuf,
    file: PathBuf,
}

impl PasswordFile {
    fn create(password: &Secret) -> Result<Self, ResticError> {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let base = std::env::temp_dir();
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or_default();
        let mut attempt = 0;
        let dir = loop {
            let n = COUNTER.fetch_add(1, Ordering::Relaxed);
            let dir = base.join(format!("cadang-restic-{}-{nanos}-{n}", std::process::id()));
            // `create` fails on an existing path (it does not follow a planted
            // symlink), and mode 0700 keeps other users out of the directory.
            match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
                Ok(()) => break dir,
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && attempt < 16 => {
                    attempt += 1;
                }
                Err(e) => {
                    return Err(ResticError::io(
                        format!(
                            "cannot create a private directory for the restic password in {}; make the temporary directory writable",
                            base.display()
                        ),
                        e,
                    ));
                }
            }
        };
        let guard = PasswordFile {
            file: dir.join("password"),
            dir,
        };
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&guard.file)
            .map_err(|e| ResticError::io("cannot create the restic password file", e))?;
        file.write_all(password.expose().as_bytes())
            .and_then(|()| file.flush())
            .map_err(|e| ResticError::io("cannot write the restic password file", e))?;
        Ok(guard)
    }
}

impl Drop for PasswordFile {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_dir_all(&self.dir) {
            tracing::warn!(dir = %self.dir.display(), error = %e, "cannot remove the restic password directory");
        }
    }
}

/// The arguments restic is started with. The password and the repository are
/// never among them.
pub(crate) fn argv(invocation: &Invocation<'_>) -> Vec<OsString> {
    let mut argv = Vec::with_capacity(invocation.args.len() + 1);
    argv.push(OsString::from(invocation.command));
    argv.extend(invocation.args.iter().cloned());
    argv
}

/// The password files of one run: the repository's, and the source repository's for
/// `copy`.
#[derive(Clone, Copy, Default)]
struct Passwords<'a> {
    repo: Option<&'a Path>,
    from: Option<&'a Path>,
}

/// The command for one run. `inherited` names the variables of the daemon's own
/// environment (a parameter so tests can inspect the result without changing it).
fn command(
    restic: &Restic,
    invocation: &Invocation<'_>,
    passwords: Passwords<'_>,
    inherited: impl IntoIterator<Item = OsString>,
) -> Command {
    let mut cmd = Command::new(restic.binary());
    cmd.args(argv(invocation));
    for name in inherited {
        if name.to_string_lossy().starts_with("RESTIC_") {
            cmd.env_remove(name);
        }
    }
    // The source's backend variables first: where both repositories set one (two S3
    // stores with different credentials), the destination's wins.
    if let Some(from) = invocation.from {
        cmd.envs(from.env.iter().map(|(k, v)| (k, v)));
        cmd.env("RESTIC_FROM_REPOSITORY", &from.location);
    }
    if let Some(repo) = invocation.repo {
        cmd.envs(repo.env.iter().map(|(k, v)| (k, v)));
        cmd.env("RESTIC_REPOSITORY", &repo.location);
    }
    if let Some(password) = passwords.repo {
        cmd.env("RESTIC_PASSWORD_FILE", password);
    }
    if let Some(password) = passwords.from {
        cmd.env("RESTIC_FROM_PASSWORD_FILE", password);
    }
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // A terminal's Ctrl-C goes to the foreground process group; restic gets its
        // own group so that only the adapter decides when it is interrupted.
        .process_group(0)
        // The last resort when the caller drops the run: the child cannot outlive it.
        .kill_on_drop(true);
    cmd
}

/// One line of output, or the news that it was too long.
enum Line {
    Text(String),
    TooLong,
}

/// Reads lines of at most `max` bytes. Cancel-safe: partial lines live in `self`,
/// and the only await point is `fill_buf`, which consumes nothing.
struct LineReader<R> {
    inner: BufReader<R>,
    buf: Vec<u8>,
    max: usize,
    too_long: bool,
    eof: bool,
}

impl<R: AsyncRead + Unpin> LineReader<R> {
    fn new(inner: R, max: usize) -> Self {
        LineReader {
            inner: BufReader::new(inner),
            buf: Vec::new(),
            max,
            too_long: false,
            eof: false,
        }
    }

    async fn next_line(&mut self) -> std::io::Result<Option<Line>> {
        loop {
            let available = self.inner.fill_buf().await?;
            if available.is_empty() {
                self.eof = true;
                if self.buf.is_empty() && !self.too_long {
                    return Ok(None);
                }
                return Ok(Some(self.take()));
            }
            let (chunk, found) = match available.iter().position(|&b| b == b'\n') {
                Some(i) => (&available[..i], i + 1),
                None => (available, 0),
            };
            let room = self.max.saturating_sub(self.buf.len());
            if chunk.len() > room {
                self.too_long = true;
            }
            self.buf.extend_from_slice(&chunk[..chunk.len().min(room)]);
            let used = if found > 0 { found } else { chunk.len() };
            self.inner.consume(used);
            if found > 0 {
                return Ok(Some(self.take()));
            }
        }
    }

    fn take(&mut self) -> Line {
        let line = if self.too_long {
            Line::TooLong
        } else {
            let text = String::from_utf8_lossy(&self.buf);
            Line::Text(text.trim_end_matches('\r').to_string())
        };
        self.buf.clear();
        self.too_long = false;
        line
    }
}

/// Removes terminal control sequences (restic clears progress lines with `ESC[2K`).
fn strip_controls(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            if chars.peek() == Some(&'[') {
                chars.next();
                // CSI: parameters, then one final byte in '@'..='~'.
                for c in chars.by_ref() {
                    if ('@'..='~').contains(&c) {
                        break;
                    }
                }
            }
        } else if !c.is_control() || c == '\t' {
            out.push(c);
        }
    }
    out
}

/// Truncates to `max` characters, marking the cut.
pub(crate) fn truncate(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((i, _)) => format!("{}…", &text[..i]),
        None => text.to_string(),
    }
}

async fn cancelled(cancel: Option<&Cancel>) {
    match cancel {
        Some(cancel) => cancel.cancelled().await,
        None => std::future::pending().await,
    }
}

async fn until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

/// Sends SIGINT, restic's signal to stop at a safe point and remove its lock.
fn interrupt(child: &Child) {
    // `id()` is `None` once the child has been reaped; until then its pid cannot be
    // reused by another process, so the signal reaches restic and nothing else.
    if let Some(pid) = child.id().and_then(|p| libc::pid_t::try_from(p).ok()) {
        // SAFETY: kill(2) has no memory-safety preconditions.
        let rc = unsafe { libc::kill(pid, libc::SIGINT) };
        if rc != 0 {
            tracing::debug!(pid, error = %std::io::Error::last_os_error(), "SIGINT to restic failed");
        }
    }
}

/// Runs restic to completion. Each stdout line goes to `on_stdout` as it arrives
/// (an `Err` stops restic and becomes [`ResticError::Unparsable`]); each stderr line,
/// cleaned and scrubbed, goes to `on_stderr`, and the lines it does not consume
/// (returns `false` for) are kept in a bounded tail for error messages.
///
/// Returns how restic ended; mapping that to success or an error is the caller's.
pub(crate) async fn run(
    restic: &Restic,
    invocation: Invocation<'_>,
    mut on_stdout: impl FnMut(&str) -> Result<(), String>,
    mut on_stderr: impl FnMut(&str) -> bool,
) -> Result<Exit, ResticError> {
    let command_name = invocation.command.to_string();
    let scrubber = Scrubber::for_repos([invocation.repo, invocation.from]);
    let location = invocation
        .repo
        .map(|r| scrubber.scrub(&r.location))
        .unwrap_or_default();
    for repo in [invocation.repo, invocation.from].into_iter().flatten() {
        validate_repo(repo)?;
    }
    if invocation.cancel.is_some_and(Cancel::is_cancelled) {
        return Err(ResticError::Cancelled {
            command: command_name,
            forced: false,
        });
    }
    let password = invocation
        .repo
        .map(|r| PasswordFile::create(&r.password))
        .transpose()?;
    let from_password = invocation
        .from
        .map(|r| PasswordFile::create(&r.password))
        .transpose()?;
    let inherited = std::env::vars_os().map(|(name, _)| name);
    let mut cmd = command(
        restic,
        &invocation,
        Passwords {
            repo: password.as_ref().map(|p| p.file.as_path()),
            from: from_password.as_ref().map(|p| p.file.as_path()),
        },
        inherited,
    );
    tracing::debug!(binary = %restic.binary().display(), args = ?argv(&invocation), "starting restic");
    let mut child = cmd.spawn().map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => ResticError::NotFound {
            path: restic.binary().to_path_buf(),
        },
        _ => ResticError::NotRunnable {
            path: restic.binary().to_path_buf(),
            reason: e.to_string(),
        },
    })?;
    let (Some(stdout), Some(stderr)) = (child.stdout.take(), child.stderr.take()) else {
        return Err(ResticError::io(
            "restic started without output pipes",
            std::io::Error::other("missing pipe"),
        ));
    };
    let mut out = LineReader::new(stdout, invocation.max_line);
    let mut err = LineReader::new(stderr, STREAM_LINE_MAX);
    let mut tail: VecDeque<String> = VecDeque::with_capacity(STDERR_TAIL_LINES);
    let mut interrupted_at: Option<Instant> = None;
    let mut kill_at: Option<Instant> = None;
    let mut drain_until: Option<Instant> = None;
    let mut status: Option<ExitStatus> = None;
    let unparsable = |reason: String, line: &str| ResticError::Unparsable {
        command: command_name.clone(),
        reason,
        line: truncate(&scrubber.scrub(line), QUOTED_LINE_CHARS),
    };

    let failure = loop {
        if out.eof && err.eof && status.is_some() {
            break None;
        }
        tokio::select! {
            line = out.next_line(), if !out.eof => match line {
                Ok(Some(Line::Text(line))) => {
                    if let Err(reason) = on_stdout(&line) {
                        break Some(unparsable(reason, &line));
                    }
                }
                Ok(Some(Line::TooLong)) => {
                    let reason = format!("an output line is longer than {} bytes", invocation.max_line);
                    break Some(unparsable(reason, ""));
                }
                Ok(None) => {}
                Err(e) => break Some(ResticError::io("cannot read restic's output", e)),
            },
            line = err.next_line(), if !err.eof => match line {
                Ok(Some(Line::Text(line))) => {
                    let line = scrubber.scrub(&strip_controls(&line));
                    if !line.trim().is_empty() && !on_stderr(&line) {
                        if tail.len() == STDERR_TAIL_LINES {
                            tail.pop_front();
                        }
                        tail.push_back(truncate(&line, STDERR_LINE_CHARS));
                    }
                }
                Ok(Some(Line::TooLong)) | Ok(None) => {}
                Err(e) => break Some(ResticError::io("cannot read restic's error output", e)),
            },
            exit = child.wait(), if status.is_none() => match exit {
                Ok(exit) => {
                    status = Some(exit);
                    // What restic wrote stays readable in the pipes; only a
                    // grandchild holding them open could keep them from closing.
                    if !(out.eof && err.eof) && drain_until.is_none() {
                        drain_until = Some(Instant::now() + PIPE_DRAIN_AFTER_EXIT);
                    }
                }
                Err(e) => break Some(ResticError::io("cannot wait for restic to exit", e)),
            },
            () = cancelled(invocation.cancel), if interrupted_at.is_none() && status.is_none() => {
                tracing::info!(command = %command_name, "cancelling restic with SIGINT");
                interrupt(&child);
                let now = Instant::now();
                interrupted_at = Some(now);
                kill_at = Some(now + restic.interrupt_grace());
            },
            () = until(kill_at), if kill_at.is_some() && status.is_none() => {
                tracing::warn!(command = %command_name, "restic ignored SIGINT; killing it");
                if let Err(e) = child.start_kill() {
                    tracing::debug!(error = %e, "SIGKILL to restic failed");
                }
                kill_at = None;
            },
            () = until(drain_until), if drain_until.is_some() => {
                out.eof = true;
                err.eof = true;
                drain_until = None;
            },
        }
    };
    if let Some(error) = failure {
        if let Err(e) = child.start_kill() {
            tracing::debug!(error = %e, "stopping restic failed");
        }
        if let Err(e) = child.wait().await {
            tracing::debug!(error = %e, "reaping restic failed");
        }
        return Err(error);
    }
    // Only now, with restic gone, may its password file go.
    drop(password);
    let status = status.ok_or_else(|| {
        ResticError::io(
            "restic's exit status is unknown",
            std::io::Error::other("no status"),
        )
    })?;
    let forced = interrupted_at.is_some() && status.signal() == Some(libc::SIGKILL);
    let exit = Exit {
        command: command_name,
        location,
        code: status.code(),
        signal: status.signal(),
        cancelled: interrupted_at.map(|_| forced),
        stderr_tail: tail.into_iter().collect(),
    };
    tracing::debug!(command = %exit.command, code = ?exit.code, signal = ?exit.signal, "restic finished");
    Ok(exit)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scrubber_removes_password_and_credentials() {
        let repo = ResticRepo {
            location: "s3:host/bucket".into(),
            password: Secret::new("hunter2-canary"),
            env: vec![
                ("AWS_SECRET_ACCESS_KEY".into(), "wJalrXUtnFEMI".into()),
                ("AWS_DEFAULT_REGION".into(), "us-east-1".into()),
            ],
        };
        let s = Scrubber::for_repo(Some(&repo));
        let out = s.scrub("pw hunter2-canary key wJalrXUtnFEMI region us-east-1");
        assert_eq!(out, "pw [redacted] key [redacted] region us-east-1");
    }

    #[test]
    fn repo_validation_names_what_to_fix() {
        let mut repo = ResticRepo {
            location: "/srv/repo".into(),
            password: Secret::new("pw"),
            env: vec![("RESTIC_PASSWORD".into(), "x".into())],
        };
        let err = validate_repo(&repo).map_err(|e| e.to_string());
        assert!(matches!(err, Err(m) if m.contains("RESTIC_PASSWORD")));
        repo.env.clear();
        assert!(validate_repo(&repo).is_ok());
        repo.password = Secret::new(" pw");
        assert!(validate_repo(&repo).is_err());
        repo.password = Secret::new("pw");
        repo.location = " ".into();
        assert!(validate_repo(&repo).is_err());
    }

    #[test]
    fn controls_are_stripped_and_text_truncated() {
        assert_eq!(
            strip_controls("\u{1b}[2Ksignal interrupt received, cleaning up\r"),
            "signal interrupt received, cleaning up"
        );
        assert_eq!(truncate("abcdef", 3), "abc…");
        assert_eq!(truncate("äbc", 3), "äbc");
    }

    #[tokio::test]
    async fn line_reader_bounds_lines_and_keeps_the_last_unterminated_one() {
        let data: &[u8] = b"short\nthis line is far too long\nok\r\nlast";
        let mut reader = LineReader::new(data, 10);
        let mut seen = Vec::new();
        while let Ok(Some(line)) = reader.next_line().await {
            seen.push(match line {
                Line::Text(t) => t,
                Line::TooLong => "<too long>".into(),
            });
        }
        assert_eq!(seen, ["short", "<too long>", "ok", "last"]);
    }

    #[test]
    fn built_command_carries_no_secret_and_overrides_inherited_restic_variables() {
        let restic = Restic::for_tests("/usr/bin/restic");
        let repo = ResticRepo {
            location: "/srv/repo".into(),
            password: Secret::new("canary-7f3a"),
            env: vec![("AWS_ACCESS_KEY_ID".into(), "AKIA".into())],
        };
        let invocation = Invocation {
            command: "snapshots",
            args: vec!["--json".into()],
            repo: Some(&repo),
            from: None,
            cancel: None,
            max_line: STREAM_LINE_MAX,
        };
        let inherited = ["RESTIC_PASSWORD", "RESTIC_REPOSITORY", "HOME"].map(OsString::from);
        let cmd = command(
            &restic,
            &invocation,
            Passwords {
                repo: Some(Path::new("/tmp/x/password")),
                from: None,
            },
            inherited,
        );
        let std_cmd = cmd.as_std();
        let args: Vec<_> = std_cmd.get_args().collect();
        assert_eq!(args, ["snapshots", "--json"]);
        let envs: Vec<(String, Option<String>)> = std_cmd
            .get_envs()
            .map(|(k, v)| {
                let v = v.map(|v| v.to_string_lossy().into_owned());
                (k.to_string_lossy().into_owned(), v)
            })
            .collect();
        let get = |name: &str| envs.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
        assert_eq!(get("RESTIC_PASSWORD"), Some(None));
        assert_eq!(get("RESTIC_REPOSITORY"), Some(Some("/srv/repo".into())));
        assert_eq!(
            get("RESTIC_PASSWORD_FILE"),
            Some(Some("/tmp/x/password".into()))
        );
        assert_eq!(get("AWS_ACCESS_KEY_ID"), Some(Some("AKIA".into())));
        assert_eq!(get("HOME"), None);
        let everything = format!("{args:?} {envs:?}");
        assert!(!everything.contains("canary-7f3a"));
    }

    #[test]
    fn a_copy_names_its_source_through_the_environment_only() {
        let restic = Restic::for_tests("/usr/bin/restic");
        let replica = ResticRepo {
            location: "/srv/replica".into(),
            password: Secret::new("replica-canary"),
            env: vec![("AWS_ACCESS_KEY_ID".into(), "REPLICA".into())],
        };
        let primary = ResticRepo {
            location: "s3:http://127.0.0.1:9000/primary".into(),
            password: Secret::new("primary-canary"),
            env: vec![
                ("AWS_ACCESS_KEY_ID".into(), "PRIMARY".into()),
                ("AWS_SECRET_ACCESS_KEY".into(), "primary-secret".into()),
            ],
        };
        let invocation = Invocation {
            command: "copy",
            args: vec!["0123abcd".into()],
            repo: Some(&replica),
            from: Some(&primary),
            cancel: None,
            max_line: STREAM_LINE_MAX,
        };
        let inherited = ["RESTIC_FROM_PASSWORD", "RESTIC_FROM_REPOSITORY"].map(OsString::from);
        let cmd = command(
            &restic,
            &invocation,
            Passwords {
                repo: Some(Path::new("/tmp/a/password")),
                from: Some(Path::new("/tmp/b/password")),
            },
            inherited,
        );
        let std_cmd = cmd.as_std();
        let args: Vec<_> = std_cmd.get_args().collect();
        assert_eq!(args, ["copy", "0123abcd"]);
        // The last value set for a name is the one the child gets.
        let mut envs = std::collections::HashMap::new();
        for (k, v) in std_cmd.get_envs() {
            envs.insert(
                k.to_string_lossy().into_owned(),
                v.map(|v| v.to_string_lossy().into_owned()),
            );
        }
        let get = |name: &str| envs.get(name).cloned().flatten();
        assert_eq!(get("RESTIC_REPOSITORY").as_deref(), Some("/srv/replica"));
        assert_eq!(
            get("RESTIC_FROM_REPOSITORY").as_deref(),
            Some("s3:http://127.0.0.1:9000/primary")
        );
        assert_eq!(
            get("RESTIC_FROM_PASSWORD_FILE").as_deref(),
            Some("/tmp/b/password")
        );
        assert_eq!(
            get("RESTIC_PASSWORD_FILE").as_deref(),
            Some("/tmp/a/password")
        );
        assert_eq!(
            get("AWS_ACCESS_KEY_ID").as_deref(),
            Some("REPLICA"),
            "the destination's wins"
        );
        assert_eq!(
            envs.get("RESTIC_FROM_PASSWORD"),
            Some(&None),
            "inherited, removed"
        );
        let everything = format!("{args:?} {envs:?}");
        assert!(!everything.contains("canary"));

        // Secrets of both repositories are scrubbed from what restic says.
        let scrubber = Scrubber::for_repos([Some(&replica), Some(&primary)]);
        assert_eq!(
            scrubber.scrub("primary-canary replica-canary primary-secret"),
            "[redacted] [redacted] [redacted]"
        );
        let mut reserved = primary.clone();
        reserved
            .env
            .push(("RESTIC_FROM_PASSWORD".into(), "x".into()));
        assert!(validate_repo(&reserved).is_err());
    }

    #[test]
    fn password_file_is_private_and_removed() {
        use std::os::unix::fs::PermissionsExt;
        let file = PasswordFile::create(&Secret::new("pw-canary"));
        let file = file.unwrap_or_else(|e| panic!("{e}"));
        let mode = |p: &std::path::Path| {
            std::fs::metadata(p)
                .map(|m| m.permissions().mode() & 0o777)
                .ok()
        };
        assert_eq!(mode(&file.dir), Some(0o700));
        assert_eq!(mode(&file.file), Some(0o600));
        assert_eq!(
            std::fs::read_to_string(&file.file).ok().as_deref(),
            Some("pw-canary")
        );
        let dir = file.dir.clone();
        drop(file);
        assert!(!dir.exists());
    }
}
