//! `cutfs`: a file system in memory, served over FUSE, whose power can be cut.
//!
//! It keeps two states. What processes see is the live state. What a disk would
//! still hold after a power cut is the durable state, and it follows POSIX's
//! promise and nothing more: a file's content becomes durable when a `fsync` of
//! that file completes, a directory's entries when a `fsync` of that directory
//! completes. After the [`Cut`], every request fails with EIO (a dead disk), and
//! [`CutFs::after_power_loss`] builds the file system found at the next boot: the
//! durable state, plus, of each change that was never synced, an arbitrary
//! choice — every unsynced directory entry independently kept or lost, every
//! unsynced file kept, lost or torn (some of its blocks new, the rest as last synced) — since a real disk may have written any of
//! them back before the cut (journal commits, page-cache writeback) or none.
//! Software that is only crash-safe on a kind file system fails here.

use fuser::{
    Config, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo,
    LockOwner, MountOption, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData,
    ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite, Request, TimeOrNow,
    WriteFlags,
};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::ffi::{OsStr, OsString};
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

/// Attributes and entries are not cached by the kernel: every lookup comes here,
/// so nothing survives the cut in the kernel's caches either.
const TTL: Duration = Duration::ZERO;

/// The unit a disk writes back: a torn file is a mix of old and new blocks of this size.
const BLOCK: usize = 4096;

#[derive(Clone, PartialEq)]
enum Content {
    Dir(BTreeMap<OsString, u64>),
    File(Vec<u8>),
}

#[derive(Clone)]
struct Node {
    content: Content,
    perm: u16,
    mtime: SystemTime,
    ctime: SystemTime,
}

impl Node {
    fn new(content: Content, perm: u16) -> Self {
        let now = SystemTime::now();
        Self {
            content,
            perm,
            mtime: now,
            ctime: now,
        }
    }
}

/// The state behind the mount: shared between the FUSE thread and the test.
struct State {
    live: HashMap<u64, Node>,
    /// Per inode, its content as of its last completed fsync.
    durable: HashMap<u64, Content>,
    next_ino: u64,
    /// Requests that change something, counted from the mount.
    changes: u64,
    /// The change at which the power goes.
    cut_at: Option<u64>,
    dead: bool,
}

impl State {
    fn fresh(live: HashMap<u64, Node>) -> Self {
        let next_ino = live.keys().max().copied().unwrap_or(1) + 1;
        let durable = live
            .iter()
            .map(|(ino, n)| (*ino, n.content.clone()))
            .collect();
        Self {
            live,
            durable,
            next_ino,
            changes: 0,
            cut_at: None,
            dead: false,
        }
    }

    /// Counts a change; false once the power is gone (the change is not made).
    fn change(&mut self) -> bool {
        if self.dead {
            return false;
        }
        self.changes += 1;
        if self.cut_at == Some(self.changes) {
            self.dead = true;
            return false;
        }
        true
    }

    fn attr(&self, ino: u64) -> Option<FileAttr> {
        let n = self.live.get(&ino)?;
        let (kind, size, nlink) = match &n.content {
            Content::Dir(_) => (FileType::Directory, 4096, 2),
            Content::File(d) => (FileType::RegularFile, d.len() as u64, self.links(ino)),
        };
        Some(FileAttr {
            ino: INodeNo(ino),
            size,
            blocks: size.div_ceil(512),
            atime: n.mtime,
            mtime: n.mtime,
            ctime: n.ctime,
            crtime: n.ctime,
            kind,
            perm: n.perm,
            nlink,
            uid: 0,
            gid: 0,
            rdev: 0,
            blksize: 4096,
            flags: 0,
        })
    }

    fn links(&self, ino: u64) -> u32 {
        self.live
            .values()
            .map(|n| match &n.content {
                Content::Dir(e) => e.values().filter(|i| **i == ino).count() as u32,
                Content::File(_) => 0,
            })
            .sum()
    }

    fn dir(&mut self, ino: u64) -> Result<&mut BTreeMap<OsString, u64>, Errno> {
        match self.live.get_mut(&ino).map(|n| &mut n.content) {
            Some(Content::Dir(e)) => Ok(e),
            Some(Content::File(_)) => Err(Errno::ENOTDIR),
            None => Err(Errno::ENOENT),
        }
    }

    fn file(&mut self, ino: u64) -> Result<&mut Node, Errno> {
        match self.live.get_mut(&ino) {
            Some(n) if matches!(n.content, Content::File(_)) => Ok(n),
            Some(_) => Err(Errno::EISDIR),
            None => Err(Errno::ENOENT),
        }
    }

    fn touch(&mut self, ino: u64) {
        if let Some(n) = self.live.get_mut(&ino) {
            let now = SystemTime::now();
            n.mtime = now;
            n.ctime = now;
        }
    }

    fn add(&mut self, parent: u64, name: &OsStr, node: Node) -> Result<u64, Errno> {
        if self.dir(parent)?.contains_key(name) {
            return Err(Errno::EEXIST);
        }
        let ino = self.next_ino;
        self.next_ino += 1;
        self.live.insert(ino, node);
        self.dir(parent)?.insert(name.to_owned(), ino);
        self.touch(parent);
        Ok(ino)
    }
}

/// The mounted file system; unmounted on drop.
pub struct CutFs {
    state: Arc<Mutex<State>>,
    session: Option<fuser::BackgroundSession>,
}

/// Where the power goes: at the n-th change (1-based) counted from the mount.
#[derive(Clone, Copy, Debug)]
pub struct Cut(pub u64);

/// A small deterministic generator (xorshift64*), so a failing trial can be replayed.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

impl CutFs {
    /// Mounts an empty file system at `mountpoint`.
    pub fn mount(mountpoint: &Path) -> std::io::Result<Self> {
        let mut live = HashMap::new();
        live.insert(1, Node::new(Content::Dir(BTreeMap::new()), 0o755));
        Self::serve(State::fresh(live), mountpoint)
    }

    fn serve(state: State, mountpoint: &Path) -> std::io::Result<Self> {
        let state = Arc::new(Mutex::new(state));
        let mut config = Config::default();
        config.mount_options = vec![MountOption::FSName("cutfs".into()), MountOption::RW];
        let session = fuser::spawn_mount(
            Served {
                state: state.clone(),
            },
            mountpoint,
            &config,
        )?;
        Ok(Self {
            state,
            session: Some(session),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Arms the cut.
    pub fn cut_at(&self, cut: Cut) {
        let mut s = self.lock();
        s.cut_at = Some(cut.0);
        if cut.0 <= s.changes {
            s.dead = true;
        }
    }

    /// Changes made so far.
    pub fn changes(&self) -> u64 {
        self.lock().changes
    }

    /// Whether the power has gone.
    pub fn dead(&self) -> bool {
        self.lock().dead
    }

    /// Cuts the power now (if it has not gone yet), unmounts, and mounts at
    /// `mountpoint` what a disk would hold at the next boot.
    pub fn after_power_loss(mut self, mountpoint: &Path, rng: &mut Rng) -> std::io::Result<Self> {
        if let Some(s) = self.session.take() {
            match s.umount_and_join() {
                Ok(()) => {}
                // The unmount went through, and the kernel then told the serving thread
                // that the connection was aborted rather than gone (seen about once in
                // ten runs with several mounts at once). The state is ours, whole.
                Err(e)
                    if e.kind() == std::io::ErrorKind::ConnectionAborted
                        && !is_mounted(mountpoint)? => {}
                Err(e) => return Err(e),
            }
        }
        let image = {
            let mut s = self.lock();
            s.dead = true;
            found_at_boot(&s, rng)
        };
        Self::serve(State::fresh(image), mountpoint)
    }
}

/// Whether a file system is mounted at `mountpoint` (per this process's mount table).
fn is_mounted(mountpoint: &Path) -> std::io::Result<bool> {
    let table = std::fs::read_to_string("/proc/self/mountinfo")?;
    // Resolved through its parent: a mount whose connection is gone cannot be stat'ed.
    let parent = mountpoint
        .parent()
        .unwrap_or(Path::new("/"))
        .canonicalize()?;
    let wanted = parent.join(mountpoint.file_name().unwrap_or_default());
    // The fifth field is the mount point, with spaces and the like octal-escaped; test
    // directories have none.
    Ok(table
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .any(|point| Path::new(point) == wanted))
}

impl Drop for CutFs {
    fn drop(&mut self) {
        if let Some(s) = self.session.take() {
            let _ = s.umount_and_join();
        }
    }
}

/// What the disk holds after the cut: the durable state, and an arbitrary part of
/// what was never synced. Only what is reachable from the root is kept.
fn found_at_boot(s: &State, rng: &mut Rng) -> HashMap<u64, Node> {
    let mut out = HashMap::new();
    let mut todo = vec![1u64];
    let mut seen = HashSet::new();
    while let Some(ino) = todo.pop() {
        if !seen.insert(ino) {
            continue;
        }
        let Some(live) = s.live.get(&ino) else {
            continue;
        };
        let durable = s.durable.get(&ino);
        let content = match (&live.content, durable) {
            (Content::Dir(now), synced) => {
                let synced = match synced {
                    Some(Content::Dir(e)) => e.clone(),
                    _ => BTreeMap::new(),
                };
                let mut kept = BTreeMap::new();
                let names: std::collections::BTreeSet<&OsString> =
                    now.keys().chain(synced.keys()).collect();
                for name in names {
                    let (a, b) = (synced.get(name), now.get(name));
                    let pick = if a == b || rng.below(2) == 0 { a } else { b };
                    if let Some(child) = pick {
                        kept.insert(name.clone(), *child);
                        todo.push(*child);
                    }
                }
                Content::Dir(kept)
            }
            (Content::File(now), synced) => {
                let synced = match synced {
                    Some(Content::File(d)) => d.clone(),
                    _ => Vec::new(),
                };
                Content::File(if &synced == now {
                    synced
                } else {
                    match rng.below(3) {
                        0 => synced,
                        1 => now.clone(),
                        // Torn: the disk wrote back some of the dirty blocks and not
                        // others, in any order, and the old or the new length. A byte is
                        // the new one or the last synced one (zero where there was none):
                        // never anything else, so what was synced and not written since
                        // stays.
                        _ => {
                            let len = if rng.below(2) == 0 {
                                now.len()
                            } else {
                                synced.len()
                            };
                            let mut d = vec![0; len];
                            for start in (0..len).step_by(BLOCK) {
                                let end = (start + BLOCK).min(len);
                                let from = if rng.below(2) == 0 { now } else { &synced };
                                let have = end.min(from.len());
                                if have > start {
                                    d[start..have].copy_from_slice(&from[start..have]);
                                }
                            }
                            d
                        }
                    }
                })
            }
        };
        out.insert(
            ino,
            Node {
                content,
                ..live.clone()
            },
        );
    }
    out
}

struct Served {
    state: Arc<Mutex<State>>,
}

impl Served {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The mode bits FUSE passes on create and mkdir, less the umask.
fn perm(mode: u32, umask: u32) -> u16 {
    (mode & !umask & 0o7777) as u16
}

impl Filesystem for Served {
    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let mut s = self.lock();
        if s.dead {
            return reply.error(Errno::EIO);
        }
        let found = s
            .dir(parent.0)
            .and_then(|e| e.get(name).copied().ok_or(Errno::ENOENT));
        match found.map(|ino| s.attr(ino)) {
            Ok(Some(a)) => reply.entry(&TTL, &a, Generation(0)),
            Ok(None) => reply.error(Errno::ENOENT),
            Err(e) => reply.error(e),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        let s = self.lock();
        if s.dead {
            return reply.error(Errno::EIO);
        }
        match s.attr(ino.0) {
            Some(a) => reply.attr(&TTL, &a),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        _uid: Option<u32>,
        _gid: Option<u32>,
        size: Option<u64>,
        _atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let mut s = self.lock();
        if !s.change() {
            return reply.error(Errno::EIO);
        }
        let Some(n) = s.live.get_mut(&ino.0) else {
            return reply.error(Errno::ENOENT);
        };
        if let Some(size) = size {
            match &mut n.content {
                Content::File(d) => d.resize(size as usize, 0),
                Content::Dir(_) => return reply.error(Errno::EISDIR),
            }
            n.mtime = SystemTime::now();
        }
        if let Some(mode) = mode {
            n.perm = (mode & 0o7777) as u16;
        }
        match mtime {
            Some(TimeOrNow::SpecificTime(t)) => n.mtime = t,
            Some(TimeOrNow::Now) => n.mtime = SystemTime::now(),
            None => {}
        }
        n.ctime = SystemTime::now();
        match s.attr(ino.0) {
            Some(a) => reply.attr(&TTL, &a),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn mkdir(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        let mut s = self.lock();
        if !s.change() {
            return reply.error(Errno::EIO);
        }
        let node = Node::new(Content::Dir(BTreeMap::new()), perm(mode, umask));
        match s.add(parent.0, name, node).map(|ino| s.attr(ino)) {
            Ok(Some(a)) => reply.entry(&TTL, &a, Generation(0)),
            Ok(None) => reply.error(Errno::EIO),
            Err(e) => reply.error(e),
        }
    }

    fn create(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let mut s = self.lock();
        if !s.change() {
            return reply.error(Errno::EIO);
        }
        let existing = match s.dir(parent.0) {
            Ok(e) => e.get(name).copied(),
            Err(e) => return reply.error(e),
        };
        let ino = match existing {
            Some(_) if flags & libc::O_EXCL != 0 => return reply.error(Errno::EEXIST),
            Some(ino) => {
                if flags & libc::O_TRUNC != 0 {
                    match s.file(ino) {
                        Ok(n) => n.content = Content::File(Vec::new()),
                        Err(e) => return reply.error(e),
                    }
                }
                ino
            }
            None => {
                let node = Node::new(Content::File(Vec::new()), perm(mode, umask));
                match s.add(parent.0, name, node) {
                    Ok(ino) => ino,
                    Err(e) => return reply.error(e),
                }
            }
        };
        match s.attr(ino) {
            Some(a) => reply.created(&TTL, &a, Generation(0), FileHandle(0), FopenFlags::empty()),
            None => reply.error(Errno::EIO),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let mut s = self.lock();
        if s.dead {
            return reply.error(Errno::EIO);
        }
        if flags.0 & libc::O_TRUNC != 0 {
            if !s.change() {
                return reply.error(Errno::EIO);
            }
            match s.file(ino.0) {
                Ok(n) => n.content = Content::File(Vec::new()),
                Err(e) => return reply.error(e),
            }
        }
        if s.live.contains_key(&ino.0) {
            reply.opened(FileHandle(0), FopenFlags::empty());
        } else {
            reply.error(Errno::ENOENT);
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let mut s = self.lock();
        if s.dead {
            return reply.error(Errno::EIO);
        }
        match s.file(ino.0).map(|n| &n.content) {
            Ok(Content::File(d)) => {
                let start = (offset as usize).min(d.len());
                let end = (start + size as usize).min(d.len());
                reply.data(&d[start..end]);
            }
            Ok(Content::Dir(_)) => reply.error(Errno::EISDIR),
            Err(e) => reply.error(e),
        }
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let mut s = self.lock();
        if !s.change() {
            return reply.error(Errno::EIO);
        }
        let n = match s.file(ino.0) {
            Ok(n) => n,
            Err(e) => return reply.error(e),
        };
        if let Content::File(d) = &mut n.content {
            let end = offset as usize + data.len();
            if d.len() < end {
                d.resize(end, 0);
            }
            d[offset as usize..end].copy_from_slice(data);
        }
        s.touch(ino.0);
        reply.written(data.len() as u32);
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        if self.lock().dead {
            return reply.error(Errno::EIO);
        }
        reply.ok();
    }

    fn fsync(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        self.sync(ino, reply);
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let mut s = self.lock();
        if s.dead {
            return reply.error(Errno::EIO);
        }
        match s.dir(ino.0) {
            Ok(_) => reply.opened(FileHandle(0), FopenFlags::empty()),
            Err(e) => reply.error(e),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let mut s = self.lock();
        if s.dead {
            return reply.error(Errno::EIO);
        }
        let entries: Vec<(u64, OsString)> = match s.dir(ino.0) {
            Ok(e) => e.iter().map(|(n, i)| (*i, n.clone())).collect(),
            Err(e) => return reply.error(e),
        };
        let all = [(ino.0, OsString::from(".")), (ino.0, OsString::from(".."))]
            .into_iter()
            .chain(entries);
        for (i, (child, name)) in all.enumerate().skip(offset as usize) {
            let kind = match s.live.get(&child).map(|n| &n.content) {
                Some(Content::Dir(_)) => FileType::Directory,
                _ => FileType::RegularFile,
            };
            if reply.add(INodeNo(child), i as u64 + 1, kind, &name) {
                break;
            }
        }
        reply.ok();
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        self.sync(ino, reply);
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        self.remove(parent, name, false, reply);
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        self.remove(parent, name, true, reply);
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        let mut s = self.lock();
        if !s.change() {
            return reply.error(Errno::EIO);
        }
        if flags.contains(RenameFlags::RENAME_EXCHANGE)
            || flags.contains(RenameFlags::RENAME_WHITEOUT)
        {
            return reply.error(Errno::EINVAL);
        }
        let ino = match s.dir(parent.0).map(|e| e.get(name).copied()) {
            Ok(Some(ino)) => ino,
            Ok(None) => return reply.error(Errno::ENOENT),
            Err(e) => return reply.error(e),
        };
        let target = match s.dir(newparent.0) {
            Ok(e) => e.get(newname).copied(),
            Err(e) => return reply.error(e),
        };
        if let Some(t) = target {
            if flags.contains(RenameFlags::RENAME_NOREPLACE) {
                return reply.error(Errno::EEXIST);
            }
            if matches!(s.live.get(&t).map(|n| &n.content), Some(Content::Dir(e)) if !e.is_empty())
            {
                return reply.error(Errno::ENOTEMPTY);
            }
        }
        if let Ok(e) = s.dir(parent.0) {
            e.remove(name);
        }
        if let Ok(e) = s.dir(newparent.0) {
            e.insert(newname.to_owned(), ino);
        }
        s.touch(parent.0);
        s.touch(newparent.0);
        reply.ok();
    }

    fn link(
        &self,
        _req: &Request,
        ino: INodeNo,
        newparent: INodeNo,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        let mut s = self.lock();
        if !s.change() {
            return reply.error(Errno::EIO);
        }
        if let Err(e) = s.file(ino.0) {
            return reply.error(if e == Errno::EISDIR { Errno::EPERM } else { e });
        }
        match s.dir(newparent.0) {
            Ok(e) if e.contains_key(newname) => return reply.error(Errno::EEXIST),
            Ok(e) => {
                e.insert(newname.to_owned(), ino.0);
            }
            Err(e) => return reply.error(e),
        }
        s.touch(newparent.0);
        if let Some(n) = s.live.get_mut(&ino.0) {
            n.ctime = SystemTime::now();
        }
        match s.attr(ino.0) {
            Some(a) => reply.entry(&TTL, &a, Generation(0)),
            None => reply.error(Errno::EIO),
        }
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: fuser::ReplyStatfs) {
        statfs(reply);
    }

    fn access(&self, _req: &Request, _ino: INodeNo, _mask: fuser::AccessFlags, reply: ReplyEmpty) {
        if self.lock().dead {
            return reply.error(Errno::EIO);
        }
        reply.ok();
    }
}

fn statfs(reply: ReplyStatfs) {
    // 1 TiB free in 4 KiB blocks; plenty of inodes.
    reply.statfs(1 << 28, 1 << 28, 1 << 28, 1 << 24, 1 << 24, 4096, 255, 4096);
}

impl Served {
    fn sync(&self, ino: INodeNo, reply: ReplyEmpty) {
        let mut s = self.lock();
        if !s.change() {
            return reply.error(Errno::EIO);
        }
        match s.live.get(&ino.0).map(|n| n.content.clone()) {
            Some(c) => {
                s.durable.insert(ino.0, c);
                reply.ok();
            }
            None => reply.error(Errno::ENOENT),
        }
    }

    fn remove(&self, parent: INodeNo, name: &OsStr, dir: bool, reply: ReplyEmpty) {
        let mut s = self.lock();
        if !s.change() {
            return reply.error(Errno::EIO);
        }
        let ino = match s.dir(parent.0).map(|e| e.get(name).copied()) {
            Ok(Some(ino)) => ino,
            Ok(None) => return reply.error(Errno::ENOENT),
            Err(e) => return reply.error(e),
        };
        match (s.live.get(&ino).map(|n| &n.content), dir) {
            (Some(Content::Dir(e)), true) if !e.is_empty() => return reply.error(Errno::ENOTEMPTY),
            (Some(Content::Dir(_)), false) => return reply.error(Errno::EISDIR),
            (Some(Content::File(_)), true) => return reply.error(Errno::ENOTDIR),
            _ => {}
        }
        if let Ok(e) = s.dir(parent.0) {
            e.remove(name);
        }
        s.touch(parent.0);
        reply.ok();
    }
}
