//! A part of a snapshot as a tar archive, streamed: `cadang dump latest /etc > etc.tar`
//! reads back a directory without restoring it, as restic's `dump` does, to be piped to
//! another machine or handed to an agency.
//!
//! Entries are named by their path in the snapshot without the leading `/` (so
//! `tar -x` recreates `etc/…` below the current directory), directories before what they
//! hold, names in the snapshot's order. File content is read chunk by chunk, each chunk
//! decrypted and checked against its id before any of it is written, so memory stays
//! bounded by a chunk and its read-ahead whatever the size of the tree. Modes, owners,
//! modification times, symlink targets, device numbers and FIFOs are kept; the second and
//! later paths of a hard-linked file become hard-link entries to the first. Sockets,
//! which tar cannot hold, are left out and listed. Times are kept to the nanosecond: an
//! entry whose time the header's whole seconds cannot hold is preceded by a PAX record.
//!
//! A chunk that is missing or damaged stops the archive at once with the file named: its
//! header already announced a size that can no longer be written, and an archive that
//! went on would hide the loss. What was written up to then is not a valid archive (the
//! end-of-archive blocks are never written), so `tar` reports it truncated too.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::io::{Read, Write};
use std::mem::ManuallyDrop;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use tar::{Builder, EntryType, Header};

use super::browse::{Place, join, walk_to};
use super::error::{Error, Result};
use super::id::{BlobId, BlobType};
use super::index::Index;
use super::pack::with_checked_plaintext;
use super::readahead::ReadAhead;
use super::repo::Repository;
use super::tree::{MAX_DEPTH, Node, NodeKind, too_deep};

/// What went into an archive.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Archived {
    /// Regular files written with their content.
    pub files: u64,
    /// Directories.
    pub dirs: u64,
    /// Symbolic links.
    pub symlinks: u64,
    /// Later paths of hard-linked files, written as links to the first.
    pub hardlinks: u64,
    /// Devices and FIFOs.
    pub specials: u64,
    /// Bytes of file content (every chunk verified).
    pub content_bytes: u64,
    /// Bytes of the archive.
    pub archive_bytes: u64,
    /// Sockets left out (tar has no entry for them), absolute paths.
    pub skipped: Vec<Vec<u8>>,
}

/// Writes what `path` names in the snapshot whose root tree is `root` — a directory and
/// everything below it, or one entry — to `out` as a tar archive (see the module
/// documentation). `sink` names `out` in errors.
///
/// # Errors
/// `InvalidInput` when the path is not in the snapshot; the repository's errors for a
/// tree or chunk that is missing or damaged (naming the path it belongs to), after which
/// the archive is incomplete; `Corrupt` for a file whose chunks do not add up to its
/// recorded size or a tree nested deeper than [`MAX_DEPTH`]; `Io` when `out` fails.
pub fn dump_tar(
    repo: &Repository,
    index: &Index,
    root: &BlobId,
    path: &[u8],
    out: &mut dyn Write,
    sink: &Path,
) -> Result<Archived> {
    let mut counted = Counted {
        inner: out,
        bytes: 0,
    };
    let mut writer = Writer {
        repo,
        index,
        sink,
        // Never dropped: a builder's drop writes the end-of-archive blocks, which must
        // not follow an entry cut short by damage.
        builder: ManuallyDrop::new(Builder::new(&mut counted)),
        first_of_link: HashMap::new(),
        done: Archived::default(),
    };
    match walk_to(repo, index, root, path)? {
        Place::Entry(listed) => writer.entry(&listed.path, &listed.node)?,
        Place::Dir { tree, path, node } => {
            if let Some(node) = &node {
                writer.entry(&path, node)?;
            }
            writer.below(tree, path)?;
        }
    }
    let mut done = std::mem::take(&mut writer.done);
    let io_error = |source| Error::Io {
        path: sink.to_path_buf(),
        source,
    };
    let builder = ManuallyDrop::into_inner(writer.builder);
    let counted = builder.into_inner().map_err(io_error)?;
    counted.flush().map_err(io_error)?;
    done.archive_bytes = counted.bytes;
    Ok(done)
}

/// Counts the bytes written through it.
struct Counted<'o> {
    inner: &'o mut dyn Write,
    bytes: u64,
}

impl Write for Counted<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.bytes += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

struct Writer<'a, W: Write> {
    repo: &'a Repository,
    index: &'a Index,
    sink: &'a Path,
    builder: ManuallyDrop<Builder<W>>,
    /// Hard-link group → the archive name of its first path.
    first_of_link: HashMap<u64, Vec<u8>>,
    done: Archived,
}

/// A path of the snapshot as an archive name: without the leading `/`.
fn archive_name(path: &[u8]) -> &Path {
    Path::new(OsStr::from_bytes(path.strip_prefix(b"/").unwrap_or(path)))
}

/// A header with `node`'s metadata. The header holds whole seconds since 1970; a time
/// with a fraction, or before 1970, goes in a PAX record as well ([`pax_mtime`]).
fn header_for(node: &Node, kind: EntryType) -> Header {
    let mut header = Header::new_gnu();
    header.set_entry_type(kind);
    header.set_mode(node.mode & 0o7777);
    header.set_uid(u64::from(node.uid));
    header.set_gid(u64::from(node.gid));
    header.set_mtime(u64::try_from(node.mtime_ns.div_euclid(1_000_000_000)).unwrap_or(0));
    header.set_size(0);
    header
}

/// The PAX `mtime` record for a modification time a tar header cannot hold — with a
/// fraction of a second, or before 1970 — as POSIX writes it: decimal seconds, the
/// fraction without trailing zeros. `None` when whole seconds say it all.
fn pax_mtime(mtime_ns: i64) -> Option<String> {
    let sign = if mtime_ns < 0 { "-" } else { "" };
    let abs = mtime_ns.unsigned_abs();
    let (secs, nanos) = (abs / 1_000_000_000, abs % 1_000_000_000);
    if nanos == 0 && mtime_ns >= 0 {
        return None;
    }
    let fraction = format!("{nanos:09}");
    let fraction = fraction.trim_end_matches('0');
    Some(if fraction.is_empty() {
        format!("{sign}{secs}")
    } else {
        format!("{sign}{secs}.{fraction}")
    })
}

/// Damage is reported with the path it is in.
pub(crate) fn in_path(error: Error, path: &[u8]) -> Error {
    error.within(|what| format!("{what} (in {})", String::from_utf8_lossy(path)))
}

impl<W: Write> Writer<'_, W> {
    /// The PAX records to precede `node`'s entry, where it needs any: its exact
    /// modification time, and its extended attributes as GNU tar and bsdtar write them
    /// (`SCHILY.xattr.NAME`; `tar --xattrs -x` restores them). A PAX key is text: an
    /// attribute whose name is not UTF-8 has no record.
    fn pax_records(&mut self, node: &Node) -> std::io::Result<()> {
        let mtime = pax_mtime(node.mtime_ns);
        let xattrs: Vec<(String, &[u8])> = node
            .xattrs
            .iter()
            .filter_map(|x| {
                let name = std::str::from_utf8(&x.name).ok()?;
                Some((format!("SCHILY.xattr.{name}"), x.value.as_slice()))
            })
            .collect();
        let records: Vec<(&str, &[u8])> = mtime
            .as_ref()
            .map(|m| ("mtime", m.as_bytes()))
            .into_iter()
            .chain(xattrs.iter().map(|(key, value)| (key.as_str(), *value)))
            .collect();
        if records.is_empty() {
            return Ok(());
        }
        self.builder.append_pax_extensions(records)
    }

    fn output_error(&self, source: std::io::Error) -> Error {
        Error::Io {
            path: self.sink.to_path_buf(),
            source,
        }
    }

    /// Everything below the directory whose tree is `tree` at `path`, depth first.
    fn below(&mut self, tree: BlobId, path: Vec<u8>) -> Result<()> {
        let (repo, index) = (self.repo, self.index);
        let load = |tree: &BlobId, path: &[u8]| {
            repo.load_tree(index, tree)
                .map(|listing| listing.nodes.into_iter())
                .map_err(|error| in_path(error, path))
        };
        let mut stack = vec![(load(&tree, &path)?, path)];
        while let Some((nodes, dir)) = stack.last_mut() {
            let Some(node) = nodes.next() else {
                stack.pop();
                continue;
            };
            let path = join(dir, &node.name);
            self.entry(&path, &node)?;
            if let (NodeKind::Dir, Some(subtree)) = (node.kind, node.subtree) {
                if stack.len() >= MAX_DEPTH {
                    return Err(Error::corrupt(String::from_utf8_lossy(&path), too_deep()));
                }
                let nodes = load(&subtree, &path)?;
                stack.push((nodes, path));
            }
        }
        Ok(())
    }

    /// One entry (a directory's own entry only; what it holds is [`Writer::below`]'s).
    fn entry(&mut self, path: &[u8], node: &Node) -> Result<()> {
        let name = archive_name(path);
        let written = match node.kind {
            NodeKind::Dir => {
                self.done.dirs += 1;
                let mut header = header_for(node, EntryType::Directory);
                self.pax_records(node).and_then(|()| {
                    self.builder
                        .append_data(&mut header, name, std::io::empty())
                })
            }
            NodeKind::File => {
                if let Some(group) = node.hardlink {
                    if let Some(first) = self.first_of_link.get(&group) {
                        self.done.hardlinks += 1;
                        let mut header = header_for(node, EntryType::Link);
                        let target = Path::new(OsStr::from_bytes(first));
                        let written = self.builder.append_link(&mut header, name, target);
                        return written.map_err(|source| self.output_error(source));
                    }
                    self.first_of_link
                        .insert(group, name.as_os_str().as_bytes().to_vec());
                }
                return self.file(path, node);
            }
            NodeKind::Symlink => {
                self.done.symlinks += 1;
                let mut header = header_for(node, EntryType::Symlink);
                let target = node.link_target.as_deref().unwrap_or_default();
                // The target's bytes as recorded; one too long for the header goes in a
                // GNU long-link entry, also as recorded.
                self.pax_records(node).and_then(|()| {
                    if header.set_link_name_literal(target).is_ok() {
                        self.builder
                            .append_data(&mut header, name, std::io::empty())
                    } else {
                        self.builder
                            .append_link(&mut header, name, OsStr::from_bytes(target))
                    }
                })
            }
            NodeKind::BlockDev | NodeKind::CharDev | NodeKind::Fifo => {
                self.done.specials += 1;
                let kind = match node.kind {
                    NodeKind::BlockDev => EntryType::Block,
                    NodeKind::CharDev => EntryType::Char,
                    _ => EntryType::Fifo,
                };
                let mut header = header_for(node, kind);
                let numbered = if node.kind == NodeKind::Fifo {
                    Ok(())
                } else {
                    header
                        .set_device_major(libc::major(node.rdev))
                        .and_then(|()| header.set_device_minor(libc::minor(node.rdev)))
                };
                numbered
                    .and_then(|()| self.pax_records(node))
                    .and_then(|()| {
                        self.builder
                            .append_data(&mut header, name, std::io::empty())
                    })
            }
            NodeKind::Socket => {
                self.done.skipped.push(path.to_vec());
                Ok(())
            }
        };
        written.map_err(|source| self.output_error(source))
    }

    /// A regular file with its content.
    fn file(&mut self, path: &[u8], node: &Node) -> Result<()> {
        let mut header = header_for(node, EntryType::Regular);
        header.set_size(node.size);
        self.pax_records(node)
            .map_err(|source| self.output_error(source))?;
        let mut content = Content {
            repo: self.repo,
            ahead: ReadAhead::new(self.repo, self.index, node.content.clone()),
            ids: node.content.iter(),
            plain: Vec::new(),
            at: 0,
            read: 0,
            size: node.size,
            failure: None,
        };
        let written = self
            .builder
            .append_data(&mut header, archive_name(path), &mut content);
        if let Some(failure) = content.failure.take() {
            return Err(in_path(failure, path));
        }
        written.map_err(|source| self.output_error(source))?;
        self.done.files += 1;
        self.done.content_bytes += node.size;
        Ok(())
    }
}

/// A file's content as a reader: each chunk verified before any of it is given out, and
/// exactly the size the snapshot records (more or less is a failure, so the archive
/// never holds an entry whose length disagrees with its header).
struct Content<'a, 'n> {
    repo: &'a Repository,
    ahead: ReadAhead<'a>,
    ids: std::slice::Iter<'n, BlobId>,
    plain: Vec<u8>,
    at: usize,
    read: u64,
    size: u64,
    /// Why the content stopped (the reader's error only says that it did).
    failure: Option<Error>,
}

impl Content<'_, '_> {
    fn fail(&mut self, error: Error) -> std::io::Error {
        let message = error.to_string();
        self.failure = Some(error);
        std::io::Error::other(message)
    }

    /// The next chunk's plaintext into `plain`; false at the end of the file.
    fn next_chunk(&mut self) -> std::result::Result<bool, Error> {
        let Some(id) = self.ids.next() else {
            if self.read != self.size {
                return Err(Error::corrupt(
                    "file",
                    format!(
                        "its chunks hold {} bytes, the snapshot records {}",
                        self.read, self.size
                    ),
                ));
            }
            return Ok(false);
        };
        let (payload, raw_length) = self.ahead.payload(id)?;
        let plain = &mut self.plain;
        plain.clear();
        with_checked_plaintext(
            self.repo.keys(),
            BlobType::Data,
            id,
            raw_length,
            &payload,
            |data| plain.extend_from_slice(data),
        )?;
        self.at = 0;
        self.read += self.plain.len() as u64;
        if self.read > self.size {
            return Err(Error::corrupt(
                "file",
                format!(
                    "its chunks hold more than the {} bytes the snapshot records",
                    self.size
                ),
            ));
        }
        Ok(true)
    }
}

impl Read for Content<'_, '_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.at == self.plain.len() {
            match self.next_chunk() {
                Ok(true) => {}
                Ok(false) => return Ok(0),
                Err(error) => return Err(self.fail(error)),
            }
        }
        let n = buf.len().min(self.plain.len() - self.at);
        buf[..n].copy_from_slice(&self.plain[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::fs;
    use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};
    use std::time::{Duration, SystemTime};

    use super::*;
    use crate::engine::backup::{BackupOptions, BackupProgress, backup};
    use crate::engine::repo::test_repository;

    /// A source tree with every kind of entry, backed up into a local repository.
    struct Fixture {
        repo: Repository,
        src: tempfile::TempDir,
        repo_dir: tempfile::TempDir,
        root: BlobId,
        _runtime: tokio::runtime::Runtime,
    }

    const LONG_NAME: &str = "a-name-longer-than-the-hundred-bytes-a-plain-tar-header-holds-so-a-gnu-long-name-entry-carries-it.txt";

    fn set_mtime(path: &Path, secs: u64) {
        let file = fs::File::open(path).unwrap();
        let when = SystemTime::UNIX_EPOCH + Duration::from_secs(secs);
        file.set_times(fs::FileTimes::new().set_modified(when))
            .unwrap();
    }

    fn fixture() -> Fixture {
        let (runtime, repo_dir, repo) = test_repository();
        let src = tempfile::tempdir().unwrap();
        let s = src.path();
        fs::create_dir_all(s.join("etc/deep/er")).unwrap();
        // Several chunks (the repository's chunks are 1 MiB on average).
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        let big: Vec<u8> = (0..6_000_000)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 32) as u8
            })
            .collect();
        fs::write(s.join("etc/big.bin"), &big).unwrap();
        fs::write(s.join("etc/empty"), b"").unwrap();
        fs::write(s.join("etc/deep/er").join(LONG_NAME), b"long name\n").unwrap();
        fs::write(s.join("etc/hosts"), b"127.0.0.1 localhost\n").unwrap();
        fs::set_permissions(s.join("etc/hosts"), fs::Permissions::from_mode(0o640)).unwrap();
        xattr::set(s.join("etc/hosts"), "user.origin", b"DINKES\x00\xff").unwrap();
        fs::hard_link(s.join("etc/hosts"), s.join("etc/hosts.link")).unwrap();
        symlink("hosts", s.join("etc/to-hosts")).unwrap();
        // Kept byte for byte: not `x/y` as a path would be normalised to.
        symlink("x//y/./", s.join("etc/odd-link")).unwrap();
        let far = format!("{}target", "../".repeat(60));
        symlink(&far, s.join("etc/far-link")).unwrap();
        let fifo = std::ffi::CString::new(s.join("etc/pipe").as_os_str().as_bytes()).unwrap();
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
        let _socket = std::os::unix::net::UnixListener::bind(s.join("etc/sock")).unwrap();
        fs::set_permissions(s.join("etc/deep"), fs::Permissions::from_mode(0o750)).unwrap();
        for (n, path) in [
            "etc/big.bin",
            "etc/empty",
            "etc/hosts",
            "etc/deep/er",
            "etc/deep",
            "etc",
        ]
        .iter()
        .enumerate()
        {
            set_mtime(&s.join(path), 1_700_000_000 + n as u64 * 86_400);
        }
        // Times a header's whole seconds cannot hold: a fraction, and before 1970.
        let at = |path: &str, when: SystemTime| {
            fs::File::open(s.join(path))
                .unwrap()
                .set_times(fs::FileTimes::new().set_modified(when))
                .unwrap();
        };
        at(
            "etc/empty",
            SystemTime::UNIX_EPOCH + Duration::new(1_700_000_000, 123_456_789),
        );
        at(
            "etc/deep/er",
            SystemTime::UNIX_EPOCH - Duration::new(86_400, 500_000_000),
        );
        let options = BackupOptions {
            paths: vec![s.join("etc")],
            ..BackupOptions::default()
        };
        let done = backup(&repo, &options, &BackupProgress::default()).unwrap();
        let root = done.snapshot.tree;
        Fixture {
            repo,
            src,
            repo_dir,
            root,
            _runtime: runtime,
        }
    }

    impl Fixture {
        /// `path` of the snapshot as an archive in memory: what `dump_tar` said, and what
        /// it wrote.
        fn dump(&self, path: &[u8]) -> (Result<Archived>, Vec<u8>) {
            let (index, _) = self.repo.load_index().unwrap();
            let mut out = Vec::new();
            let done = dump_tar(
                &self.repo,
                &index,
                &self.root,
                path,
                &mut out,
                Path::new("t"),
            );
            (done, out)
        }

        /// The source directory's path in the snapshot.
        fn etc(&self) -> std::path::PathBuf {
            self.src.path().join("etc")
        }
    }

    /// An archive's entries by name: kind, mode, mtime in nanoseconds (the PAX record's
    /// where there is one, else the header's seconds), link name and content.
    type Entries = BTreeMap<String, (EntryType, u32, i64, Option<Vec<u8>>, Vec<u8>)>;

    /// A PAX time (`-86400.5`, `1700000000.123456789`, `12`) in nanoseconds.
    fn pax_time_ns(value: &str) -> i64 {
        let (sign, digits) = match value.strip_prefix('-') {
            Some(rest) => (-1, rest),
            None => (1, value),
        };
        let (secs, fraction) = digits.split_once('.').unwrap_or((digits, ""));
        let nanos: i64 = format!("{fraction:0<9}").parse().unwrap();
        sign * (secs.parse::<i64>().unwrap() * 1_000_000_000 + nanos)
    }

    /// The entries of an archive, and their names in archive order. Content shorter than
    /// its header says is an error, as it is to `tar`.
    fn read_archive(bytes: &[u8]) -> std::io::Result<Entries> {
        read_archive_in_order(bytes).map(|(entries, _)| entries)
    }

    fn read_archive_in_order(bytes: &[u8]) -> std::io::Result<(Entries, Vec<String>)> {
        let mut entries = Entries::new();
        let mut order = Vec::new();
        for entry in tar::Archive::new(bytes).entries()? {
            let mut entry = entry?;
            let header = entry.header().clone();
            let name = String::from_utf8(entry.path_bytes().into_owned()).unwrap();
            let link = entry.link_name_bytes().map(|l| l.into_owned());
            let mut mtime = i64::try_from(header.mtime()?).unwrap() * 1_000_000_000;
            if let Some(records) = entry.pax_extensions()? {
                for record in records {
                    let record = record?;
                    if record.key() == Ok("mtime") {
                        mtime = pax_time_ns(record.value().unwrap());
                    }
                }
            }
            let mut content = Vec::new();
            entry.read_to_end(&mut content)?;
            if content.len() as u64 != header.size()? {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    format!("{name}: {} bytes of {}", content.len(), header.size()?),
                ));
            }
            order.push(name.clone());
            entries.insert(
                name,
                (header.entry_type(), header.mode()?, mtime, link, content),
            );
        }
        Ok((entries, order))
    }

    #[test]
    fn times_a_header_cannot_hold_are_written_as_posix_does() {
        assert_eq!(pax_mtime(1_700_000_000 * 1_000_000_000), None);
        assert_eq!(pax_mtime(0), None);
        let cases = [
            (1_700_000_000_123_456_789, "1700000000.123456789"),
            (1_500_000_000, "1.5"),
            (1, "0.000000001"),
            (-1_500_000_000, "-1.5"),
            (-2_000_000_000, "-2"),
            (-1, "-0.000000001"),
            (i64::MIN + 1, "-9223372036.854775807"),
        ];
        for (ns, text) in cases {
            assert_eq!(pax_mtime(ns).as_deref(), Some(text), "{ns}");
            assert_eq!(pax_time_ns(text), ns, "{text}");
        }
        assert_eq!(pax_mtime(i64::MIN).unwrap(), "-9223372036.854775808");
    }

    #[test]
    fn a_directory_becomes_an_archive_of_everything_below_it_with_its_metadata() {
        let f = fixture();
        let etc = f.etc();
        let (done, out) = f.dump(etc.as_os_str().as_bytes());
        let done = done.unwrap();
        assert_eq!(done.archive_bytes, out.len() as u64);
        assert_eq!(
            (
                done.files,
                done.dirs,
                done.symlinks,
                done.hardlinks,
                done.specials
            ),
            (4, 3, 3, 1, 1),
            "{done:?}"
        );
        assert_eq!(
            done.skipped,
            vec![[etc.as_os_str().as_bytes(), b"/sock".as_slice()].concat()]
        );
        let (entries, order) = read_archive_in_order(&out).unwrap();
        let prefix = etc.to_str().unwrap().trim_start_matches('/').to_owned();
        let at = |name: &str| {
            let key = if name.is_empty() {
                prefix.clone()
            } else {
                format!("{prefix}/{name}")
            };
            entries
                .get(&key)
                .or_else(|| entries.get(&format!("{key}/")))
                .unwrap_or_else(|| panic!("{key} missing from {:?}", entries.keys()))
                .clone()
        };
        let src = |name: &str| fs::read(etc.join(name)).unwrap();
        // Content, verified on the way, byte for byte.
        for name in ["big.bin", "empty", "hosts"] {
            let (kind, _, _, _, content) = at(name);
            assert_eq!(kind, EntryType::Regular, "{name}");
            assert!(content == src(name), "{name}");
        }
        let long = format!("deep/er/{LONG_NAME}");
        assert_eq!(at(&long).4, b"long name\n");
        // Modes and mtimes as recorded, to the nanosecond and before 1970.
        let secs = 1_000_000_000;
        assert_eq!(at("hosts").1, 0o640);
        assert_eq!(at("hosts").2, (1_700_000_000 + 2 * 86_400) * secs);
        assert_eq!(at("deep").1, 0o750);
        assert_eq!(at("deep").0, EntryType::Directory);
        assert_eq!(at("").2, (1_700_000_000 + 5 * 86_400) * secs);
        assert_eq!(at("empty").2, 1_700_000_000_123_456_789);
        assert_eq!(at("deep/er").2, -86_400_500_000_000);
        let to_hosts = fs::symlink_metadata(etc.join("to-hosts")).unwrap();
        assert_eq!(
            at("to-hosts").2,
            to_hosts.mtime() * secs + to_hosts.mtime_nsec()
        );
        // Links: targets as recorded, the second path of the hard-linked file a link to
        // the first (in the snapshot's order, `hosts` before `hosts.link`).
        assert_eq!(at("to-hosts").0, EntryType::Symlink);
        assert_eq!(at("to-hosts").3.as_deref(), Some(b"hosts".as_slice()));
        assert_eq!(at("odd-link").3.as_deref(), Some(b"x//y/./".as_slice()));
        let far = format!("{}target", "../".repeat(60));
        assert_eq!(at("far-link").3.as_deref(), Some(far.as_bytes()));
        assert_eq!(at("hosts.link").0, EntryType::Link);
        assert_eq!(
            at("hosts.link").3,
            Some(format!("{prefix}/hosts").into_bytes())
        );
        assert_eq!(at("pipe").0, EntryType::Fifo);
        assert!(!entries.keys().any(|name| name.ends_with("sock")));
        // Directories come before what they hold, each entry once.
        assert_eq!(order.len(), entries.len());
        assert_eq!(order.len(), 12, "{order:?}");
        for (n, name) in order.iter().enumerate().skip(1) {
            let parent = Path::new(name.trim_end_matches('/')).parent().unwrap();
            let before = order[..n]
                .iter()
                .any(|earlier| Path::new(earlier.trim_end_matches('/')) == parent);
            assert!(before, "{name} before its directory: {order:?}");
        }
    }

    #[test]
    fn the_whole_snapshot_and_a_single_file_are_archives_too() {
        let f = fixture();
        let (all, whole) = f.dump(b"/");
        let all = all.unwrap();
        let names: Vec<String> = read_archive(&whole).unwrap().into_keys().collect();
        // The directories from the root down to the source, and the two below it.
        let depth = f.etc().components().count() - 1;
        assert_eq!(all.dirs as usize, depth + 2, "{names:?}");
        assert!(names.iter().all(|name| !name.starts_with('/')), "{names:?}");
        let (single, one) = f.dump(f.etc().join("hosts").as_os_str().as_bytes());
        let single = single.unwrap();
        assert_eq!((single.files, single.dirs), (1, 0));
        let entries = read_archive(&one).unwrap();
        assert_eq!(entries.len(), 1);
        assert_eq!(entries.values().next().unwrap().4, b"127.0.0.1 localhost\n");
        // A path that is not there is refused before anything is written.
        let (missing, none) = f.dump(b"/no/such");
        assert!(
            matches!(missing, Err(Error::InvalidInput(_))),
            "{missing:?}"
        );
        assert!(none.is_empty());
    }

    #[test]
    fn damage_stops_the_archive_naming_the_file_and_never_ends_it_cleanly() {
        let f = fixture();
        let (index, _) = f.repo.load_index().unwrap();
        // Flip a byte inside the second chunk of big.bin.
        let big = f.etc().join("big.bin");
        let file =
            crate::engine::browse::entry(&f.repo, &index, &f.root, big.as_os_str().as_bytes())
                .unwrap();
        assert!(
            file.node.content.len() >= 2,
            "{:?}",
            file.node.content.len()
        );
        let (pack, location) = index.get(&file.node.content[1]).unwrap();
        let pack_path = f.repo_dir.path().join(crate::engine::repo::pack_key(&pack));
        let mut bytes = fs::read(&pack_path).unwrap();
        bytes[(location.offset + location.length / 2) as usize] ^= 0x40;
        fs::write(&pack_path, bytes).unwrap();
        let (done, out) = f.dump(f.etc().as_os_str().as_bytes());
        let error = done.unwrap_err();
        let message = error.to_string();
        assert!(message.contains("/etc/big.bin"), "{message}");
        assert!(!matches!(error, Error::Io { .. }), "{error:?}");
        // What was written does not read as a complete archive.
        assert!(read_archive(&out).is_err(), "a cut archive read as whole");
        assert!(out.len() < 1024 || out[out.len() - 1024..].iter().any(|b| *b != 0));
    }

    /// A writer that fails once `room` bytes were written.
    struct Full {
        room: usize,
    }

    impl Write for Full {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            if self.room == 0 {
                return Err(std::io::Error::other("no space left"));
            }
            let n = buf.len().min(self.room);
            self.room -= n;
            Ok(n)
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn extended_attributes_go_in_pax_records_as_gnu_tar_reads_them() {
        let f = fixture();
        let (done, out) = f.dump(f.etc().as_os_str().as_bytes());
        done.unwrap();
        let mut found = BTreeMap::new();
        for entry in tar::Archive::new(out.as_slice()).entries().unwrap() {
            let mut entry = entry.unwrap();
            let name = String::from_utf8(entry.path_bytes().into_owned()).unwrap();
            if let Some(records) = entry.pax_extensions().unwrap() {
                for record in records {
                    let record = record.unwrap();
                    let key = record.key().unwrap().to_owned();
                    if key.starts_with("SCHILY.xattr.") {
                        let base = name.rsplit('/').next().unwrap_or_default().to_owned();
                        found.insert((base, key), record.value_bytes().to_vec());
                    }
                }
            }
        }
        assert_eq!(
            found,
            BTreeMap::from([(
                ("hosts".to_owned(), "SCHILY.xattr.user.origin".to_owned()),
                b"DINKES\x00\xff".to_vec()
            )]),
            "the file has its attribute, and nothing else has any"
        );
    }

    #[test]
    fn a_failing_output_is_named_as_the_output() {
        let f = fixture();
        let (index, _) = f.repo.load_index().unwrap();
        let mut out = Full { room: 100_000 };
        let error = dump_tar(
            &f.repo,
            &index,
            &f.root,
            b"/",
            &mut out,
            Path::new("the sink"),
        )
        .unwrap_err();
        match error {
            Error::Io { path, .. } => assert_eq!(path, Path::new("the sink")),
            other => panic!("{other:?}"),
        }
    }
}
