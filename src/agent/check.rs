//! The check a restore plan runs on its target after a restore (`pg_isready`, `curl -fsS
//! http://…/health`): a program with arguments, no shell, killed at its timeout.

use std::process::Stdio;
use std::time::Duration;

use super::programs::AllowedPrograms;
use crate::rpc::pb;

/// Most output kept (the end of it: a failing check prints why last).
const KEEP: usize = 4096;

fn tail(stdout: &[u8], stderr: &[u8]) -> String {
    let mut both = Vec::with_capacity(stdout.len() + stderr.len());
    both.extend_from_slice(stdout);
    both.extend_from_slice(stderr);
    let start = both.len().saturating_sub(KEEP);
    String::from_utf8_lossy(&both[start..]).into_owned()
}

/// Runs the check, if this agent allows its program, and reports how it ended; never
/// fails itself.
pub async fn run(job: pb::CheckJob, allowed: &AllowedPrograms) -> pb::CheckDone {
    let mut done = pb::CheckDone {
        job_id: job.job_id.clone(),
        ..Default::default()
    };
    let Some((program, args)) = job.command.split_first() else {
        done.error = "the check command is empty".into();
        return done;
    };
    let program = match allowed.resolve(program) {
        Ok(path) => path,
        Err(refusal) => {
            done.error = format!("check refused: {refusal}");
            return done;
        }
    };
    let mut command = tokio::process::Command::new(&program);
    command
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    if !job.dir.is_empty() && std::path::Path::new(&job.dir).is_dir() {
        command.current_dir(&job.dir);
    }
    let child = match command.spawn() {
        Ok(child) => child,
        Err(error) => {
            done.error = format!("cannot start `{}`: {error}", program.display());
            return done;
        }
    };
    let timeout = Duration::from_secs(u64::from(job.timeout_secs.clamp(1, 3600)));
    match tokio::time::timeout(timeout, child.wait_with_output()).await {
        Ok(Ok(output)) => {
            done.exit_code = output.status.code();
            done.output = tail(&output.stdout, &output.stderr);
            if done.exit_code.is_none() {
                done.error = "the check was ended by a signal".into();
            }
        }
        Ok(Err(error)) => done.error = format!("cannot wait for `{}`: {error}", program.display()),
        // Dropping the child kills it.
        Err(_) => {
            done.timed_out = true;
            done.error = format!("no answer within {} s", timeout.as_secs());
        }
    }
    done
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(command: &[&str], timeout_secs: u32) -> pb::CheckJob {
        pb::CheckJob {
            job_id: "check:1".into(),
            command: command.iter().map(|s| (*s).to_owned()).collect(),
            timeout_secs,
            dir: "/".into(),
        }
    }

    /// Every directory of the test's `PATH`, and `/nonexistent/`.
    fn path_dirs() -> AllowedPrograms {
        let mut dirs: Vec<std::path::PathBuf> =
            std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
                .filter(|dir| dir.is_absolute())
                .map(|dir| {
                    let mut entry = dir.into_os_string();
                    entry.push("/");
                    entry.into()
                })
                .collect();
        dirs.push("/nonexistent/".into());
        AllowedPrograms::new(&dirs).unwrap()
    }

    #[tokio::test]
    async fn a_check_this_agent_does_not_allow_is_refused_unrun() {
        let dir = tempfile::tempdir().unwrap();
        let marker = dir.path().join("ran");
        let command = format!("touch {}", marker.display());
        let refused = run(job(&["sh", "-c", &command], 5), &AllowedPrograms::default()).await;
        assert!(refused.exit_code.is_none(), "{refused:?}");
        assert!(
            refused.error.starts_with("check refused:")
                && refused.error.contains("--allow-program"),
            "{refused:?}"
        );
        assert!(!marker.exists(), "nothing ran");
        let ran = run(job(&["sh", "-c", &command], 5), &path_dirs()).await;
        assert_eq!(ran.exit_code, Some(0), "{ran:?}");
        assert!(marker.exists());
    }

    #[tokio::test]
    async fn exit_status_output_timeout_and_missing_programs_are_reported() {
        let allowed = path_dirs();
        let ok = run(job(&["sh", "-c", "echo ready"], 5), &allowed).await;
        assert_eq!(
            (ok.exit_code, ok.timed_out, ok.output.trim()),
            (Some(0), false, "ready")
        );
        let failed = run(job(&["sh", "-c", "echo down >&2; exit 3"], 5), &allowed).await;
        assert_eq!(failed.exit_code, Some(3));
        assert!(failed.output.contains("down"));
        let started = std::time::Instant::now();
        let slow = run(job(&["sleep", "30"], 1), &allowed).await;
        assert!(slow.timed_out && slow.exit_code.is_none());
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "killed at the timeout"
        );
        let missing = run(job(&["/nonexistent/check"], 5), &allowed).await;
        assert!(missing.exit_code.is_none() && missing.error.contains("cannot start"));
        let chatty = run(
            job(
                &[
                    "sh",
                    "-c",
                    "head -c 100000 /dev/zero | tr '\\0' x; echo END",
                ],
                5,
            ),
            &allowed,
        )
        .await;
        assert!(chatty.output.len() <= KEEP && chatty.output.ends_with("END\n"));
    }
}
