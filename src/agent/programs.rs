//! The programs the daemon may run on this server: a plan's before-backup program and a
//! restore plan's check. The server belongs to its agency, and the agent runs as root; so
//! the list is the server administrator's, given to `cadang agent run --allow-program`
//! (or `CADANG_AGENT_ALLOW_PROGRAMS`), never the daemon's. With an empty list — the
//! default — the agent runs no program at all, whatever a plan says: a daemon taken over
//! by an attacker can then read and restore files, as it must, but not run commands on
//! every colocated server.
//!
//! An entry is a program's absolute path (`/usr/local/sbin/dump-simpeg`), or a directory
//! ending in `/` (`/usr/local/lib/cadang-hooks/`) whose programs are all allowed. A
//! command that names its program without a slash is looked up in the agent's `PATH`
//! first, and the path found is the one checked and run. Paths are compared as written,
//! component by component; a path with `..` in it is refused.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};

/// The programs this agent runs for the daemon.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AllowedPrograms {
    files: Vec<PathBuf>,
    dirs: Vec<PathBuf>,
}

fn has_parent_component(path: &Path) -> bool {
    path.components().any(|c| matches!(c, Component::ParentDir))
}

impl AllowedPrograms {
    /// Reads the administrator's list.
    ///
    /// # Errors
    /// An entry that is not an absolute path, or that holds `..`.
    pub fn new(entries: &[PathBuf]) -> Result<Self, String> {
        let mut allowed = Self::default();
        for entry in entries {
            if entry.as_os_str().is_empty() {
                continue;
            }
            if !entry.is_absolute() || has_parent_component(entry) {
                return Err(format!(
                    "--allow-program {}: give an absolute path without `..` (a program, or a directory ending in /)",
                    entry.display()
                ));
            }
            if entry.as_os_str().as_bytes().ends_with(b"/") {
                allowed.dirs.push(entry.clone());
            } else {
                allowed.files.push(entry.clone());
            }
        }
        Ok(allowed)
    }

    /// Whether no program is allowed.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.files.is_empty() && self.dirs.is_empty()
    }

    /// The entries, for the agent's log.
    #[must_use]
    pub fn describe(&self) -> Vec<String> {
        self.files
            .iter()
            .chain(&self.dirs)
            .map(|p| p.display().to_string())
            .collect()
    }

    /// The path to run for `program` (as a command names it), if this agent allows it.
    ///
    /// # Errors
    /// A refusal that names the program and how the administrator allows it.
    pub fn resolve(&self, program: &str) -> Result<PathBuf, String> {
        let path = if program.contains('/') {
            PathBuf::from(program)
        } else {
            find_in_path(OsStr::new(program), std::env::var_os("PATH").as_deref())
                .ok_or_else(|| format!("`{program}` is not found in this agent's PATH"))?
        };
        if !path.is_absolute() || has_parent_component(&path) {
            return Err(format!(
                "`{program}` must be named by absolute path without `..` to run on an agent"
            ));
        }
        let allowed = self.files.contains(&path)
            || path
                .parent()
                .is_some_and(|dir| self.dirs.iter().any(|allowed| allowed == dir));
        if allowed {
            Ok(path)
        } else {
            Err(format!(
                "this agent does not run `{}` for the daemon: the server's administrator allows a program with `cadang agent run --allow-program {}` (or CADANG_AGENT_ALLOW_PROGRAMS)",
                path.display(),
                path.display()
            ))
        }
    }

    /// `command` with its program replaced by the allowed path that is to run.
    ///
    /// # Errors
    /// An empty command, or a refusal (see [`Self::resolve`]).
    pub fn command(&self, command: &[String]) -> Result<Vec<String>, String> {
        let Some((program, args)) = command.split_first() else {
            return Err("the command is empty".into());
        };
        let path = self.resolve(program)?;
        let path = path
            .to_str()
            .ok_or_else(|| format!("`{program}` resolves to a path that is not UTF-8"))?;
        Ok(std::iter::once(path.to_owned())
            .chain(args.iter().cloned())
            .collect())
    }
}

/// The first executable regular file named `name` in the absolute directories of `path`.
fn find_in_path(name: &OsStr, path: Option<&OsStr>) -> Option<PathBuf> {
    std::env::split_paths(path?)
        .filter(|dir| dir.is_absolute())
        .map(|dir| dir.join(name))
        .find(|candidate| {
            std::fs::metadata(candidate)
                .is_ok_and(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn allowed(entries: &[&str]) -> AllowedPrograms {
        AllowedPrograms::new(&entries.iter().map(PathBuf::from).collect::<Vec<_>>()).unwrap()
    }

    #[test]
    fn nothing_runs_unless_the_administrator_allows_it() {
        let none = allowed(&[]);
        assert!(none.is_empty());
        let refused = none.resolve("/usr/bin/pg_dump").unwrap_err();
        assert!(
            refused.contains("--allow-program /usr/bin/pg_dump"),
            "{refused}"
        );

        let some = allowed(&["/usr/bin/pg_dump", "/usr/local/lib/cadang-hooks/"]);
        assert_eq!(
            some.resolve("/usr/bin/pg_dump").unwrap(),
            PathBuf::from("/usr/bin/pg_dump")
        );
        // Written differently, the same path.
        assert!(some.resolve("/usr//bin/./pg_dump").is_ok());
        assert!(
            some.resolve("/usr/local/lib/cadang-hooks/dump-simpeg")
                .is_ok()
        );
        // Only directly in an allowed directory, and never out of it by `..`.
        for refused in [
            "/usr/bin/pg_dumpall",
            "/usr/local/lib/cadang-hooks/sub/dump",
            "/usr/local/lib/cadang-hooks/../../../bin/sh",
            "/usr/bin/../bin/pg_dump",
            "/usr/local/lib/cadang-hooks",
            "./pg_dump",
        ] {
            assert!(some.resolve(refused).is_err(), "{refused} is refused");
        }
        let command = some
            .command(&["/usr/bin/pg_dump".into(), "-Fc".into(), "simpeg".into()])
            .unwrap();
        assert_eq!(command, ["/usr/bin/pg_dump", "-Fc", "simpeg"]);
        assert!(some.command(&[]).is_err());
    }

    #[test]
    fn entries_must_be_absolute_and_without_parent_steps() {
        for bad in ["pg_dump", "bin/", "/usr/bin/../sbin/x"] {
            let error = AllowedPrograms::new(&[PathBuf::from(bad)]).unwrap_err();
            assert!(error.contains(bad), "{error}");
        }
        let allowed = allowed(&["/bin/", "", "/usr/bin/test"]);
        assert_eq!(allowed.describe(), ["/usr/bin/test", "/bin/"]);
    }

    #[test]
    fn a_bare_name_is_looked_up_in_path_and_the_path_found_is_checked() {
        let dir = tempfile::tempdir().unwrap();
        let first = dir.path().join("first");
        let second = dir.path().join("second");
        for d in [&first, &second] {
            std::fs::create_dir(d).unwrap();
        }
        // Not executable in the first directory: the second one's is found.
        std::fs::write(first.join("cek"), "#!/bin/sh\n").unwrap();
        std::fs::write(second.join("cek"), "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(second.join("cek"), std::fs::Permissions::from_mode(0o755))
            .unwrap();
        let path =
            std::env::join_paths(["relative/dir".as_ref(), first.as_path(), &second]).unwrap();
        assert_eq!(
            find_in_path(OsStr::new("cek"), Some(&path)),
            Some(second.join("cek"))
        );
        assert_eq!(find_in_path(OsStr::new("missing"), Some(&path)), None);
        assert_eq!(find_in_path(OsStr::new("cek"), None), None);

        // Through the agent's own PATH: `sh` is somewhere, and allowed only there.
        let found = find_in_path(OsStr::new("sh"), std::env::var_os("PATH").as_deref())
            .expect("sh in PATH");
        let mut dir_entry = found.parent().unwrap().as_os_str().to_owned();
        dir_entry.push("/");
        let by_dir = AllowedPrograms::new(&[PathBuf::from(dir_entry)]).unwrap();
        assert_eq!(by_dir.resolve("sh").unwrap(), found);
        assert!(allowed(&["/nonexistent/"]).resolve("sh").is_err());
        let missing = by_dir.resolve("no-such-program-here").unwrap_err();
        assert!(missing.contains("not found"), "{missing}");
    }
}
