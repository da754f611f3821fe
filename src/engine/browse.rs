//! Browsing snapshots without restoring them: the entries of one directory (or
//! everything below it), and the files whose name matches a pattern, across any number
//! of snapshots. This is how an officer finds what to restore before a restore is
//! planned: "which night's backup still has `laporan-2025.xlsx`, and where was it?" —
//! and, with [`dump`], how one file is read back without a restore, verified
//! ([`super::archive`] writes a whole directory as a tar archive).
//!
//! Only the trees on the way are read: listing `/var/www` loads the root, `var` and
//! `www`, not the whole snapshot. A search skips every subtree it already searched in
//! an earlier snapshot and found nothing in (same tree id at the same path), so
//! searching thirty nightly snapshots costs little more than searching one: most of a
//! server does not change between nights. Walks are bounded by [`MAX_DEPTH`], and
//! answers by the caller's limit.

use std::collections::HashSet;

use globset::{GlobBuilder, GlobMatcher};

use super::error::{Error, Result};
use super::id::{BlobId, BlobType};
use super::index::Index;
use super::pack::with_checked_plaintext;
use super::readahead::ReadAhead;
use super::repo::Repository;
use super::tree::{MAX_DEPTH, Node, NodeKind, too_deep};

/// One entry with its absolute path in the snapshot (`/etc/hosts`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Listed {
    /// Absolute path, raw bytes.
    pub path: Vec<u8>,
    /// The entry as recorded.
    pub node: Node,
}

/// What a listing or a search found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Found {
    /// The entries, in tree order (names sorted, a directory before what it holds).
    pub entries: Vec<Listed>,
    /// More entries matched than the limit allowed.
    pub truncated: bool,
}

impl Found {
    /// Adds `listed` unless the limit is reached (then marks the answer truncated).
    /// Returns whether there is room for more.
    fn push(&mut self, listed: Listed, limit: usize) -> bool {
        if self.entries.len() >= limit {
            self.truncated = true;
            return false;
        }
        self.entries.push(listed);
        true
    }
}

/// The components of an absolute or relative snapshot path (`/var/www`, `var/www/`,
/// `/`); empty components are skipped.
fn components(path: &[u8]) -> impl Iterator<Item = &[u8]> {
    path.split(|b| *b == b'/').filter(|part| !part.is_empty())
}

pub(crate) fn join(prefix: &[u8], name: &[u8]) -> Vec<u8> {
    let mut path = Vec::with_capacity(prefix.len() + 1 + name.len());
    path.extend_from_slice(prefix);
    path.push(b'/');
    path.extend_from_slice(name);
    path
}

/// Where a path of a snapshot leads.
pub(crate) enum Place {
    /// A directory (the root too): its tree, its absolute path, and its own entry (none
    /// for the root).
    Dir {
        tree: BlobId,
        path: Vec<u8>,
        node: Option<Node>,
    },
    /// Any other entry: a file, link or device.
    Entry(Listed),
}

/// Follows `path` from the root tree `root`, reading only the trees on the way.
pub(crate) fn walk_to(
    repo: &Repository,
    index: &Index,
    root: &BlobId,
    path: &[u8],
) -> Result<Place> {
    let mut tree = *root;
    let mut at: Vec<u8> = Vec::new();
    let mut dir: Option<Node> = None;
    let mut parts = components(path).peekable();
    while let Some(name) = parts.next() {
        let listing = repo.load_tree(index, &tree)?;
        let Ok(found) = listing
            .nodes
            .binary_search_by(|node| node.name.as_slice().cmp(name))
        else {
            return Err(Error::InvalidInput(format!(
                "{} is not in the snapshot",
                String::from_utf8_lossy(&join(&at, name))
            )));
        };
        let node = &listing.nodes[found];
        at = join(&at, name);
        match (node.kind, node.subtree) {
            (NodeKind::Dir, Some(subtree)) => {
                tree = subtree;
                dir = Some(node.clone());
            }
            _ if parts.peek().is_none() => {
                return Ok(Place::Entry(Listed {
                    path: at,
                    node: node.clone(),
                }));
            }
            _ => {
                return Err(Error::InvalidInput(format!(
                    "{} is not a directory in the snapshot",
                    String::from_utf8_lossy(&at)
                )));
            }
        }
    }
    Ok(Place::Dir {
        tree,
        path: at,
        node: dir,
    })
}

/// The entry `path` names in the snapshot whose root tree is `root`, when it is not a
/// directory (a file, link or device).
///
/// # Errors
/// As [`list`], and `InvalidInput` when the path names a directory.
pub fn entry(repo: &Repository, index: &Index, root: &BlobId, path: &[u8]) -> Result<Listed> {
    match walk_to(repo, index, root, path)? {
        Place::Entry(listed) => Ok(listed),
        Place::Dir { path, .. } => Err(Error::InvalidInput(format!(
            "{} is a directory in the snapshot",
            if path.is_empty() {
                "/".into()
            } else {
                String::from_utf8_lossy(&path)
            }
        ))),
    }
}

/// The entry `path` names in the snapshot whose root tree is `root`, or `None` when it
/// names a directory (the root too).
///
/// # Errors
/// As [`list`].
pub fn entry_or_dir(
    repo: &Repository,
    index: &Index,
    root: &BlobId,
    path: &[u8],
) -> Result<Option<Listed>> {
    match walk_to(repo, index, root, path)? {
        Place::Entry(listed) => Ok(Some(listed)),
        Place::Dir { .. } => Ok(None),
    }
}

/// The entries at `path` in the snapshot whose root tree is `root`: a directory's
/// entries (with `recursive`, everything below it), or the one entry a file's path
/// names. At most `limit` entries.
///
/// # Errors
/// `InvalidInput` when the path is not in the snapshot (naming the first component that
/// is missing or not a directory); repository errors for unreadable trees; `Corrupt`
/// for a tree nested deeper than [`MAX_DEPTH`].
pub fn list(
    repo: &Repository,
    index: &Index,
    root: &BlobId,
    path: &[u8],
    recursive: bool,
    limit: usize,
) -> Result<Found> {
    let (tree, at) = match walk_to(repo, index, root, path)? {
        Place::Dir { tree, path, .. } => (tree, path),
        Place::Entry(listed) => {
            let mut answer = Found::default();
            answer.push(listed, limit);
            return Ok(answer);
        }
    };
    let mut answer = Found::default();
    if recursive {
        // Everything below matches: a search that skips nothing.
        let mut finder = Finder::new(repo, index, Patterns::everything());
        finder.search(&tree, &at, 0, limit, &mut answer)?;
    } else {
        for node in repo.load_tree(index, &tree)?.nodes {
            let path = join(&at, &node.name);
            if !answer.push(Listed { path, node }, limit) {
                break;
            }
        }
    }
    Ok(answer)
}

/// Writes the content of `file` (a regular file, as [`entry`] finds it) to `out`, chunk
/// after chunk, each decrypted and checked against its id before any of it is written;
/// chunks lying side by side in a pack are read with one request. `sink` names `out` in
/// errors. Returns the bytes written.
///
/// # Errors
/// `InvalidInput` when the entry is not a regular file; the repository's errors for a
/// chunk that is missing or damaged (naming it); `Corrupt` when the chunks do not add
/// up to the size the snapshot records; `Io` when `out` fails.
pub fn dump(
    repo: &Repository,
    index: &Index,
    file: &Listed,
    out: &mut dyn std::io::Write,
    sink: &std::path::Path,
) -> Result<u64> {
    let shown = || String::from_utf8_lossy(&file.path).into_owned();
    if file.node.kind != NodeKind::File {
        return Err(Error::InvalidInput(format!(
            "{} is not a regular file in the snapshot",
            shown()
        )));
    }
    // Damage is reported with the file it is in.
    let named = |error: Error| super::archive::in_path(error, &file.path);
    let mut ahead = ReadAhead::new(repo, index, file.node.content.clone());
    let mut written = 0u64;
    for id in &file.node.content {
        let (payload, raw_length) = ahead.payload(id).map_err(named)?;
        let length = with_checked_plaintext(
            repo.keys(),
            BlobType::Data,
            id,
            raw_length,
            &payload,
            |data| {
                out.write_all(data).map_err(|source| Error::Io {
                    path: sink.to_path_buf(),
                    source,
                })?;
                Ok(data.len() as u64)
            },
        )
        .map_err(named)??;
        written += length;
    }
    out.flush().map_err(|source| Error::Io {
        path: sink.to_path_buf(),
        source,
    })?;
    if written != file.node.size {
        return Err(Error::corrupt(
            shown(),
            format!(
                "its chunks hold {written} bytes, the snapshot records {}",
                file.node.size
            ),
        ));
    }
    Ok(written)
}

/// Compiled search patterns: shell globs (`*`, `?`, `[…]`, `{a,b}`). A pattern without
/// a `/` is matched against each entry's name (`*.xlsx`), one with a `/` against its
/// absolute path (`/var/www/**/*.php`, where `**` crosses directories).
#[derive(Clone, Debug)]
pub struct Patterns {
    by_name: Vec<GlobMatcher>,
    by_path: Vec<GlobMatcher>,
    everything: bool,
}

impl Patterns {
    /// Matches every entry (a recursive listing).
    fn everything() -> Self {
        Self {
            by_name: Vec::new(),
            by_path: Vec::new(),
            everything: true,
        }
    }

    /// Compiles `patterns`; `ignore_case` matches letters of either case.
    ///
    /// # Errors
    /// `InvalidInput` naming a pattern that is not a valid glob, or when there is none.
    pub fn new(patterns: &[String], ignore_case: bool) -> Result<Self> {
        if patterns.is_empty() {
            return Err(Error::InvalidInput("give at least one pattern".into()));
        }
        let mut compiled = Self {
            by_name: Vec::new(),
            by_path: Vec::new(),
            everything: false,
        };
        for pattern in patterns {
            let glob = GlobBuilder::new(pattern)
                .case_insensitive(ignore_case)
                .literal_separator(true)
                .backslash_escape(true)
                .build()
                .map_err(|e| Error::InvalidInput(format!("pattern {pattern:?}: {e}")))?
                .compile_matcher();
            if pattern.contains('/') {
                compiled.by_path.push(glob);
            } else {
                compiled.by_name.push(glob);
            }
        }
        Ok(compiled)
    }

    /// Whether an entry named `name` at the absolute path `path` matches.
    #[must_use]
    pub fn is_match(&self, name: &[u8], path: &[u8]) -> bool {
        let matches = |globs: &[GlobMatcher], text: &[u8]| {
            !globs.is_empty() && {
                let text = String::from_utf8_lossy(text);
                globs.iter().any(|glob| glob.is_match(text.as_ref()))
            }
        };
        self.everything || matches(&self.by_name, name) || matches(&self.by_path, path)
    }
}

/// What a search of several snapshots found ([`Finder::find_in`]).
#[derive(Debug)]
pub struct Matches<T> {
    /// The snapshots with a match, in the order searched, each with what matched.
    pub snapshots: Vec<(T, Found)>,
    /// The limit stopped the search: more entries, or snapshots not searched.
    pub truncated: bool,
}

impl<T> Matches<T> {
    /// Entries found in all.
    #[must_use]
    pub fn count(&self) -> usize {
        self.snapshots
            .iter()
            .map(|(_, found)| found.entries.len())
            .sum()
    }
}

/// Searches snapshots one after the other, remembering the subtrees that held no match
/// (by tree id and path) so a later snapshot does not read them again.
pub struct Finder<'a> {
    repo: &'a Repository,
    index: &'a Index,
    patterns: Patterns,
    barren: HashSet<(BlobId, Vec<u8>)>,
}

/// Subtrees remembered as holding no match; past this the memory is dropped and
/// filled again (a search of a huge server stays bounded).
const BARREN_KEPT: usize = 1 << 20;

impl<'a> Finder<'a> {
    /// A search for `patterns` in `repo`.
    #[must_use]
    pub fn new(repo: &'a Repository, index: &'a Index, patterns: Patterns) -> Self {
        Self {
            repo,
            index,
            patterns,
            barren: HashSet::new(),
        }
    }

    /// The matching entries of the snapshot whose root tree is `root`, at most `limit`.
    ///
    /// # Errors
    /// Repository errors for unreadable trees; `Corrupt` for a tree nested deeper than
    /// [`MAX_DEPTH`].
    pub fn find(&mut self, root: &BlobId, limit: usize) -> Result<Found> {
        let mut answer = Found::default();
        self.search(root, b"", 0, limit, &mut answer)?;
        Ok(answer)
    }

    /// Searches `snapshots` in the order given (each a label the caller keeps, such as
    /// its id, and its root tree), at most `limit` matching entries in all. Only the
    /// snapshots with a match are returned.
    ///
    /// # Errors
    /// As [`Finder::find`].
    pub fn find_in<T>(
        &mut self,
        snapshots: impl IntoIterator<Item = (T, BlobId)>,
        limit: usize,
    ) -> Result<Matches<T>> {
        let mut left = limit;
        let mut answer = Matches {
            snapshots: Vec::new(),
            truncated: false,
        };
        for (label, root) in snapshots {
            if left == 0 {
                answer.truncated = true;
                break;
            }
            let found = self.find(&root, left)?;
            left -= found.entries.len();
            answer.truncated = found.truncated;
            if !found.entries.is_empty() {
                answer.snapshots.push((label, found));
            }
            if answer.truncated {
                break;
            }
        }
        Ok(answer)
    }

    /// Returns whether the search may go on (the limit is not reached).
    fn search(
        &mut self,
        tree: &BlobId,
        prefix: &[u8],
        depth: usize,
        limit: usize,
        answer: &mut Found,
    ) -> Result<bool> {
        if depth > MAX_DEPTH {
            return Err(Error::corrupt(
                format!("tree {}", String::from_utf8_lossy(prefix)),
                too_deep(),
            ));
        }
        let key = (*tree, prefix.to_vec());
        if self.barren.contains(&key) {
            return Ok(true);
        }
        let before = answer.entries.len();
        for node in self.repo.load_tree(self.index, tree)?.nodes {
            let path = join(prefix, &node.name);
            let subtree = (node.kind == NodeKind::Dir)
                .then_some(node.subtree)
                .flatten();
            if self.patterns.is_match(&node.name, &path)
                && !answer.push(
                    Listed {
                        path: path.clone(),
                        node,
                    },
                    limit,
                )
            {
                return Ok(false);
            }
            if let Some(subtree) = subtree
                && !self.search(&subtree, &path, depth + 1, limit, answer)?
            {
                return Ok(false);
            }
        }
        if answer.entries.len() == before {
            if self.barren.len() >= BARREN_KEPT {
                self.barren.clear();
            }
            self.barren.insert(key);
        }
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_paths_are_matched_by_the_pattern_s_kind() {
        let patterns =
            Patterns::new(&["*.xlsx".into(), "/var/www/**/index.php".into()], false).unwrap();
        assert!(patterns.is_match(b"laporan.xlsx", b"/home/a/laporan.xlsx"));
        assert!(!patterns.is_match(b"laporan.XLSX", b"/home/a/laporan.XLSX"));
        assert!(patterns.is_match(b"index.php", b"/var/www/html/site/index.php"));
        assert!(!patterns.is_match(b"index.php", b"/srv/www/index.php"));
        // A name pattern never spans directories.
        assert!(
            !Patterns::new(&["a*b".into()], false)
                .unwrap()
                .is_match(b"x", b"/a/b")
        );
        let folded = Patterns::new(&["*.xlsx".into()], true).unwrap();
        assert!(folded.is_match(b"LAPORAN.XLSX", b"/LAPORAN.XLSX"));
        assert!(matches!(
            Patterns::new(&["[".into()], false),
            Err(Error::InvalidInput(_))
        ));
        assert!(matches!(
            Patterns::new(&[], false),
            Err(Error::InvalidInput(_))
        ));
    }

    #[test]
    fn path_components_skip_empty_parts() {
        let parts: Vec<&[u8]> = components(b"//var/www/").collect();
        assert_eq!(parts, vec![b"var".as_slice(), b"www".as_slice()]);
        assert_eq!(components(b"/").count(), 0);
    }
}
