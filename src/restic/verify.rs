//! Independent verification of a restore: the snapshot listing from `restic ls`
//! compared, entry by entry, with what is on disk under the restore target.
//!
//! This is deliberately not restic's own `--verify`: it checks that every selected
//! file and directory exists with the right type, that every file has the listed size
//! and reads back completely, and that nothing outside the snapshot appeared in the
//! target. Restic's per-file errors are folded in as problems too, because a file
//! restic failed to write can still exist with the right size (restic preallocates).
//! Reads only; nothing here writes, and no path outside the target is touched.

use std::collections::HashSet;
use std::fmt;
use std::fs::File;
use std::io::Read;
use std::os::unix::fs::FileTypeExt;
use std::path::{Component, Path, PathBuf};

use super::json::{FileError, NodeType, ResticNode};

/// Problems kept in a [`ResticError::RestoreIncomplete`](super::ResticError); the
/// total is counted beyond this.
pub(crate) const MAX_PROBLEMS: usize = 1000;

/// What is wrong with one restored path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProblemKind {
    /// In the snapshot, not on disk.
    Missing,
    /// On disk with another type.
    WrongType {
        /// The type in the snapshot.
        expected: NodeType,
        /// The type on disk.
        found: String,
    },
    /// A file whose size differs from the snapshot's.
    WrongSize {
        /// Size in the snapshot.
        expected: u64,
        /// Size on disk.
        found: u64,
    },
    /// A file that cannot be read back completely.
    Unreadable {
        /// Why.
        error: String,
    },
    /// A symlink pointing elsewhere than in the snapshot.
    WrongLinkTarget {
        /// Target in the snapshot.
        expected: String,
        /// Target on disk.
        found: String,
    },
    /// On disk under the target, but not in the snapshot.
    Unexpected,
    /// The listing names a path that would leave the target (`..`); not followed.
    UnsafePath,
    /// Restic itself reported an error for this path.
    ResticError {
        /// Restic's message (scrubbed).
        message: String,
    },
}

/// One difference between a snapshot and its restore, by path inside the snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestoreProblem {
    /// Path inside the snapshot (as `restic ls` prints it).
    pub path: String,
    /// What is wrong.
    pub kind: ProblemKind,
}

impl fmt::Display for RestoreProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let path = &self.path;
        match &self.kind {
            ProblemKind::Missing => write!(f, "{path}: missing"),
            ProblemKind::WrongType { expected, found } => {
                write!(f, "{path}: is a {found}, expected a {expected}")
            }
            ProblemKind::WrongSize { expected, found } => {
                write!(f, "{path}: {found} bytes, expected {expected}")
            }
            ProblemKind::Unreadable { error } => write!(f, "{path}: unreadable: {error}"),
            ProblemKind::WrongLinkTarget { expected, found } => {
                write!(f, "{path}: links to {found}, expected {expected}")
            }
            ProblemKind::Unexpected => write!(f, "{path}: not in the snapshot"),
            ProblemKind::UnsafePath => write!(f, "{path}: path leaves the restore target"),
            ProblemKind::ResticError { message } => write!(f, "{path}: restic: {message}"),
        }
    }
}

/// What the verification counted on success.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VerifiedCounts {
    /// Files verified (type, size, full read).
    pub files: u64,
    /// Directories verified.
    pub dirs: u64,
    /// Symlinks, devices, fifos and sockets verified by type.
    pub other: u64,
    /// Bytes read back.
    pub bytes: u64,
}

/// Collects problems with a bound on memory.
#[derive(Debug, Default)]
pub(crate) struct Problems {
    pub list: Vec<RestoreProblem>,
    pub total: u64,
}

impl Problems {
    pub(crate) fn push(&mut self, path: &str, kind: ProblemKind) {
        self.total += 1;
        if self.list.len() < MAX_PROBLEMS {
            self.list.push(RestoreProblem {
                path: path.to_string(),
                kind,
            });
        }
    }
}

/// Compares `nodes` (the whole snapshot listing) with `target`. Only nodes selected
/// by `includes` (restic's `--include` semantics; all when empty) must be present;
/// anything on disk must be in the listing. `restic_errors` become problems first.
/// `keep_going` is polled between entries so a cancel stops a long verification.
pub(crate) fn verify(
    target: &Path,
    nodes: &[ResticNode],
    includes: &[String],
    restic_errors: &[FileError],
    keep_going: &dyn Fn() -> bool,
) -> Result<(VerifiedCounts, Problems), std::io::Error> {
    let mut problems = Problems::default();
    for error in restic_errors {
        problems.push(
            &error.path,
            ProblemKind::ResticError {
                message: error.message.clone(),
            },
        );
    }
    let mut counts = VerifiedCounts::default();
    let mut buf = vec![0u8; 1 << 16];
    for node in nodes {
        if !keep_going() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::Interrupted,
                "verification cancelled",
            ));
        }
        if !includes.is_empty() && !includes.iter().any(|p| include_matches(p, &node.path)) {
            continue;
        }
        let Some(on_disk) = inside(target, &node.path) else {
            problems.push(&node.path, ProblemKind::UnsafePath);
            continue;
        };
        if let Some(kind) = check_node(node, &on_disk, &mut counts, &mut buf) {
            problems.push(&node.path, kind);
        }
    }
    let listed: HashSet<&str> = nodes.iter().map(|n| n.path.as_str()).collect();
    walk_unexpected(target, target, &listed, &mut problems)?;
    Ok((counts, problems))
}

/// The on-disk path of a snapshot path, or `None` when it would leave `target`.
fn inside(target: &Path, snapshot_path: &str) -> Option<PathBuf> {
    let relative = Path::new(snapshot_path.trim_start_matches('/'));
    if relative.as_os_str().is_empty()
        || relative
            .components()
            .any(|c| !matches!(c, Component::Normal(_)))
    {
        return None;
    }
    Some(target.join(relative))
}

fn describe(file_type: std::fs::FileType) -> &'static str {
    if file_type.is_file() {
        "file"
    } else if file_type.is_dir() {
        "dir"
    } else if file_type.is_symlink() {
        "symlink"
    } else if file_type.is_block_device() {
        "dev"
    } else if file_type.is_char_device() {
        "chardev"
    } else if file_type.is_fifo() {
        "fifo"
    } else if file_type.is_socket() {
        "socket"
    } else {
        "unknown"
    }
}

fn check_node(
    node: &ResticNode,
    on_disk: &Path,
    counts: &mut VerifiedCounts,
    buf: &mut [u8],
) -> Option<ProblemKind> {
    let meta = match std::fs::symlink_metadata(on_disk) {
        Ok(meta) => meta,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Some(ProblemKind::Missing),
        Err(e) => {
            return Some(ProblemKind::Unreadable {
                error: e.to_string(),
            });
        }
    };
    let found = describe(meta.file_type());
    let expected = match &node.node_type {
        NodeType::Irregular | NodeType::Other(_) => {
            // No type to hold it to; existing is all restic promises.
            counts.other += 1;
            return None;
        }
        known => known.to_string(),
    };
    if found != expected {
        return Some(ProblemKind::WrongType {
            expected: node.node_type.clone(),
            found: found.to_string(),
        });
    }
    match node.node_type {
        NodeType::File => {
            if meta.len() != node.size {
                return Some(ProblemKind::WrongSize {
                    expected: node.size,
                    found: meta.len(),
                });
            }
            match read_fully(on_disk, buf) {
                Ok(read) if read == node.size => {
                    counts.files += 1;
                    counts.bytes += read;
                    None
                }
                Ok(read) => Some(ProblemKind::Unreadable {
                    error: format!("read {read} of {} bytes", node.size),
                }),
                Err(e) => Some(ProblemKind::Unreadable {
                    error: e.to_string(),
                }),
            }
        }
        NodeType::Dir => {
            counts.dirs += 1;
            None
        }
        NodeType::Symlink => {
            if let Some(expected) = &node.link_target {
                let found = std::fs::read_link(on_disk)
                    .map(|t| t.to_string_lossy().into_owned())
                    .unwrap_or_default();
                if &found != expected {
                    return Some(ProblemKind::WrongLinkTarget {
                        expected: expected.clone(),
                        found,
                    });
                }
            }
            counts.other += 1;
            None
        }
        _ => {
            counts.other += 1;
            None
        }
    }
}

fn read_fully(path: &Path, buf: &mut [u8]) -> std::io::Result<u64> {
    let mut file = File::open(path)?;
    let mut total = 0u64;
    loop {
        match file.read(buf) {
            Ok(0) => return Ok(total),
            Ok(n) => total += n as u64,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// Reports everything under `dir` whose snapshot path is not in `listed`. Does not
/// follow symlinks.
fn walk_unexpected(
    root: &Path,
    dir: &Path,
    listed: &HashSet<&str>,
    problems: &mut Problems,
) -> std::io::Result<()> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && dir == root => return Ok(()),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let entry = entry?;
        let path = entry.path();
        let relative = path.strip_prefix(root).unwrap_or(&path);
        let snapshot_path = format!("/{}", relative.to_string_lossy());
        if !listed.contains(snapshot_path.as_str()) {
            problems.push(&snapshot_path, ProblemKind::Unexpected);
            continue;
        }
        if entry.file_type()?.is_dir() {
            walk_unexpected(root, &path, listed, problems)?;
        }
    }
    Ok(())
}

/// Whether restic's `--include PATTERN` selects the snapshot path `path`.
///
/// Mirrors restic's `filter.Match`: the pattern and the path are split into
/// components; a pattern starting with `/` must match from the root, any other
/// pattern may match at any depth; a match of a directory selects everything below
/// it; components are shell globs (`*`, `?`, `[…]`, `\`) and `**` spans any number
/// of components. A malformed glob matches nothing, as restic rejects it.
pub(crate) fn include_matches(pattern: &str, path: &str) -> bool {
    let pattern = split(pattern);
    let path = split(path);
    if pattern.is_empty() {
        return true;
    }
    match_components(&pattern, &path)
}

fn split(p: &str) -> Vec<&str> {
    let mut parts: Vec<&str> = Vec::new();
    if p.starts_with('/') {
        parts.push("/");
    }
    for part in p.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                if parts.last().is_some_and(|l| *l != "/" && *l != "..") {
                    parts.pop();
                } else if parts.first() != Some(&"/") {
                    parts.push("..");
                }
            }
            other => parts.push(other),
        }
    }
    parts
}

fn match_components(pattern: &[&str], path: &[&str]) -> bool {
    if let Some(pos) = pattern.iter().position(|p| *p == "**") {
        // Expand `**` into zero or more `*`, as restic does.
        for n in 0..=path.len() {
            let mut expanded: Vec<&str> = pattern[..pos].to_vec();
            expanded.extend(std::iter::repeat_n("*", n));
            expanded.extend_from_slice(&pattern[pos + 1..]);
            if expanded.len() <= path.len() && match_components(&expanded, path) {
                return true;
            }
        }
        return false;
    }
    if pattern.len() > path.len() {
        return false;
    }
    let rooted = pattern.first() == Some(&"/");
    let min = usize::from(!rooted && path.first() == Some(&"/"));
    let max = if rooted {
        0
    } else {
        path.len() - pattern.len()
    };
    (min..=max).rev().any(|offset| {
        pattern
            .iter()
            .zip(&path[offset..])
            .all(|(p, s)| glob(p, s).unwrap_or(false))
    })
}

/// Go's `filepath.Match` for one path component; `None` for a malformed pattern.
fn glob(pattern: &str, name: &str) -> Option<bool> {
    let p: Vec<char> = pattern.chars().collect();
    let s: Vec<char> = name.chars().collect();
    glob_at(&p, &s)
}

fn glob_at(p: &[char], s: &[char]) -> Option<bool> {
    let Some((&first, rest)) = p.split_first() else {
        return Some(s.is_empty());
    };
    match first {
        '*' => {
            for skip in 0..=s.len() {
                if glob_at(rest, &s[skip..])? {
                    return Some(true);
                }
            }
            Some(false)
        }
        '?' => match s.split_first() {
            Some((_, s_rest)) => glob_at(rest, s_rest),
            None => Some(false),
        },
        '[' => {
            let (matched, after) = class(rest, s.first().copied())?;
            match (matched, s.split_first()) {
                (true, Some((_, s_rest))) => glob_at(after, s_rest),
                _ => Some(false),
            }
        }
        '\\' => {
            let (&escaped, after) = rest.split_first()?;
            match s.split_first() {
                Some((&c, s_rest)) if c == escaped => glob_at(after, s_rest),
                _ => Some(false),
            }
        }
        c => match s.split_first() {
            Some((&d, s_rest)) if c == d => glob_at(rest, s_rest),
            _ => Some(false),
        },
    }
}

/// Matches a character class after its `[`; returns whether `c` is in it and the
/// pattern after the closing `]`.
fn class(p: &[char], c: Option<char>) -> Option<(bool, &[char])> {
    let (negated, mut p) = match p.split_first() {
        Some(('^', rest)) => (true, rest),
        _ => (false, p),
    };
    let mut matched = false;
    let mut first = true;
    loop {
        let (&lo, rest) = p.split_first()?;
        if lo == ']' && !first {
            p = rest;
            break;
        }
        first = false;
        let (lo, rest) = unescape(lo, rest)?;
        let (hi, rest) = match rest.split_first() {
            Some(('-', after)) if after.first().is_some_and(|&h| h != ']') => {
                let (&h, after) = after.split_first()?;
                unescape(h, after)?
            }
            _ => (lo, rest),
        };
        if lo > hi {
            return None;
        }
        if c.is_some_and(|c| lo <= c && c <= hi) {
            matched = true;
        }
        p = rest;
    }
    Some((matched != negated && c.is_some(), p))
}

fn unescape(c: char, rest: &[char]) -> Option<(char, &[char])> {
    if c == '\\' {
        let (&e, rest) = rest.split_first()?;
        Some((e, rest))
    } else {
        Some((c, rest))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn include_semantics_follow_restic() {
        let cases = [
            ("/src", "/src/a.txt", true),
            ("/src", "/src", true),
            ("/src", "/other/src/a.txt", false),
            ("sub", "/src/sub/b.bin", true),
            ("sub", "/src/subway", false),
            ("*.txt", "/src/a.txt", true),
            ("*.txt", "/src/a.bin", false),
            ("/src/*.txt", "/src/a.txt", true),
            ("/src/*.txt", "/src/sub/a.txt", false),
            ("/src/**/b.bin", "/src/sub/deep/b.bin", true),
            ("/src/**/b.bin", "/src/b.bin", true),
            ("/**/b.bin", "/x/b.bin", true),
            ("b?n", "/src/bin", true),
            ("[ab].txt", "/src/a.txt", true),
            ("[^ab].txt", "/src/a.txt", false),
            ("[a-c].txt", "/src/c.txt", true),
            ("\\*", "/src/*", true),
            ("\\*", "/src/a", false),
            ("[", "/src/[", false),
            ("/src/sub/../a.txt", "/src/a.txt", true),
            ("", "/anything", true),
            ("/src/sub/b.bin/deeper", "/src/sub/b.bin", false),
        ];
        for (pattern, path, expected) in cases {
            assert_eq!(
                include_matches(pattern, path),
                expected,
                "{pattern} vs {path}"
            );
        }
    }

    fn node(path: &str, node_type: NodeType, size: u64) -> ResticNode {
        ResticNode {
            path: path.into(),
            name: path.rsplit('/').next().unwrap_or_default().into(),
            node_type,
            size,
            mode: None,
            uid: 0,
            gid: 0,
            mtime: None,
            link_target: None,
        }
    }

    fn listing() -> Vec<ResticNode> {
        vec![
            node("/src", NodeType::Dir, 0),
            node("/src/a.txt", NodeType::File, 6),
            node("/src/link", NodeType::Symlink, 0),
            node("/src/sub", NodeType::Dir, 0),
            node("/src/sub/b.bin", NodeType::File, 3),
        ]
    }

    fn tree(root: &Path) -> std::io::Result<()> {
        std::fs::create_dir_all(root.join("src/sub"))?;
        std::fs::write(root.join("src/a.txt"), "hello\n")?;
        std::fs::write(root.join("src/sub/b.bin"), "abc")?;
        std::os::unix::fs::symlink("a.txt", root.join("src/link"))
    }

    #[test]
    fn a_faithful_restore_verifies() -> std::io::Result<()> {
        let dir = tempfile::tempdir()?;
        tree(dir.path())?;
        let (counts, problems) = verify(dir.path(), &listing(), &[], &[], &|| true)?;
        assert_eq!(problems.total, 0, "{:?}", problems.list);
        assert_eq!(
            counts,
            VerifiedCounts {
                files: 2,
                dirs: 2,
                other: 1,
                bytes: 9
            }
        );
        Ok(())
    }

    #[test]
    fn every_kind_of_difference_is_named_by_path() -> std::io::Result<()> {
        let dir = tempfile::tempdir()?;
        tree(dir.path())?;
        std::fs::write(dir.path().join("src/a.txt"), "hello, world\n")?;
        std::fs::remove_file(dir.path().join("src/sub/b.bin"))?;
        std::fs::remove_file(dir.path().join("src/link"))?;
        std::fs::create_dir(dir.path().join("src/link"))?;
        std::fs::write(dir.path().join("src/stray"), "x")?;
        let mut nodes = listing();
        nodes.push(node("/../etc/passwd", NodeType::File, 1));
        let restic_errors = [FileError {
            path: "/src/a.txt".into(),
            message: "ciphertext verification failed".into(),
            during: None,
        }];
        let (_, problems) = verify(dir.path(), &nodes, &[], &restic_errors, &|| true)?;
        let shown: Vec<String> = problems.list.iter().map(ToString::to_string).collect();
        assert_eq!(
            shown,
            [
                "/src/a.txt: restic: ciphertext verification failed",
                "/src/a.txt: 13 bytes, expected 6",
                "/src/link: is a dir, expected a symlink",
                "/src/sub/b.bin: missing",
                "/../etc/passwd: path leaves the restore target",
                "/src/stray: not in the snapshot",
            ]
        );
        assert_eq!(problems.total, 6);
        Ok(())
    }

    #[test]
    fn includes_limit_what_must_exist() -> std::io::Result<()> {
        let dir = tempfile::tempdir()?;
        std::fs::create_dir_all(dir.path().join("src/sub"))?;
        std::fs::write(dir.path().join("src/sub/b.bin"), "abc")?;
        let includes = ["sub".to_string()];
        let (counts, problems) = verify(dir.path(), &listing(), &includes, &[], &|| true)?;
        assert_eq!(problems.total, 0, "{:?}", problems.list);
        assert_eq!((counts.files, counts.dirs), (1, 1));
        Ok(())
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn unreadable_files_are_reported_and_cancel_stops() -> std::io::Result<()> {
        // Tests run as root, which reads any file whatever its mode; /proc/self/mem
        // stands in for an unreadable file: it stats as 0 bytes and reading fails (EIO).
        let mem = node("/proc/self/mem", NodeType::File, 0);
        let mut counts = VerifiedCounts::default();
        let kind = check_node(
            &mem,
            Path::new("/proc/self/mem"),
            &mut counts,
            &mut [0u8; 16],
        );
        assert!(
            matches!(kind, Some(ProblemKind::Unreadable { .. })),
            "{kind:?}"
        );
        assert_eq!(counts, VerifiedCounts::default());

        let dir = tempfile::tempdir()?;
        tree(dir.path())?;
        assert!(verify(dir.path(), &listing(), &[], &[], &|| false).is_err());
        Ok(())
    }

    #[test]
    fn problems_are_bounded_but_counted() {
        let mut problems = Problems::default();
        for i in 0..(MAX_PROBLEMS + 5) {
            problems.push(&format!("/f{i}"), ProblemKind::Missing);
        }
        assert_eq!(problems.list.len(), MAX_PROBLEMS);
        assert_eq!(problems.total, MAX_PROBLEMS as u64 + 5);
    }
}
